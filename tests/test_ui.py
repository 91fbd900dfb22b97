"""The dashboard: figure builders (no Streamlit), URL/upload helpers, and every page driven through
streamlit.testing.v1.AppTest with its numbers checked against the library computed directly."""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest
import yaml

from hwmodels.clusters import cluster_names, load_cluster, summary
from hwmodels.collectives import bus_bandwidth, collective_s
from hwmodels.errors import InputError
from simulator.analytic import estimate
from simulator.memory import stage_memory
from simulator.models import from_hf_config, load_model
from simulator.training import TrainingJob, parse_plan

AppTest = pytest.importorskip("streamlit.testing.v1").AppTest
from ui import charts, state  # noqa: E402  (needs streamlit)
APP = str(Path(__file__).resolve().parents[1] / "ui" / "app.py")
GIB = 2 ** 30
CLUSTERS_YAML = Path(__file__).resolve().parents[1] / "hwmodels" / "data" / "clusters.yaml"


def close(a, b, rel=1e-9):
    return math.isclose(float(a), float(b), rel_tol=rel, abs_tol=1e-12)


def app(page: str | None = None, **query) -> AppTest:
    """An AppTest of the dashboard, optionally on `page` with URL query parameters, after one run."""
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params.update({k: str(v) for k, v in query.items()})
    at.run()
    if page:
        at.switch_page(f"pages/{page}.py")
        at.query_params.clear()
        at.query_params.update({k: str(v) for k, v in query.items()})
        at.run()
    return at


def ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def figure(at: AppTest, key: str) -> dict:
    found = [e for e in at.get("plotly_chart") if e.key == key]
    assert found, f"no plotly chart {key!r}; have {[e.key for e in at.get('plotly_chart')]}"
    return json.loads(found[0].proto.spec)


def table(at: AppTest, column: str):
    """The first dataframe on the page with `column` (AppTest does not expose dataframe keys)."""
    found = [d.value for d in at.dataframe if column in d.value.columns]
    assert found, f"no dataframe with column {column!r}"
    return found[0]


def trace(fig: dict, name: str) -> dict:
    for t in fig["data"]:
        if t.get("name") == name:
            return t
    raise AssertionError(f"no trace {name!r} in {[t.get('name') for t in fig['data']]}")


def preset_yaml(preset: str, **changes) -> str:
    data = yaml.safe_load(CLUSTERS_YAML.read_text())["clusters"][preset]
    data = {**data, **changes}
    return yaml.safe_dump(data)


# ---- figure builders (no Streamlit) -----------------------------------------------------------

def test_tier_tree_of_two_tier_cluster():
    g = charts.tier_tree(summary(load_cluster("dgx-h100", nodes=2)))
    roles = [d["role"] for _, d in g.nodes(data=True)]
    assert roles.count("fabric") == 1 and roles.count("node") == 2 and roles.count("device") == 16
    assert {d["tier"] for a, b, d in g.edges(data=True) if a == "fabric"} == {1}
    assert all(d["tier"] == 0 for a, b, d in g.edges(data=True) if g.nodes[b]["role"] == "device")


def test_tier_tree_of_three_tier_cluster_and_caps():
    g = charts.tier_tree(summary(load_cluster("frontier", nodes=2)))  # 2 nodes x 4 packages x 2 GCDs
    roles = [d["role"] for _, d in g.nodes(data=True)]
    assert roles.count("domain") == 8 and roles.count("device") == 16
    big = charts.tier_tree(summary(load_cluster("gb200-nvl72", nodes=100)), max_nodes=4, max_children=8)
    roles = [d["role"] for _, d in big.nodes(data=True)]
    assert roles.count("node") == 3 and roles.count("device") == 3 * 7
    labels = [d["label"] for _, d in big.nodes(data=True) if d["role"] == "more"]
    assert "+97 nodes" in labels and labels.count("+65 devices") == 3


def test_topology_figure_names_every_tier_with_its_bandwidth():
    info = summary(load_cluster("frontier", nodes=3))
    fig = charts.topology_figure(info).to_plotly_json()
    names = [t.get("name", "") for t in fig["data"]]
    for i, t in enumerate(info["tiers"]):
        assert any(n.startswith(f"tier {i}: {t['name']}") and f"{t['bytes_per_s'] / 1e9:g} GB/s" in n
                   for n in names), names
    assert "24 devices" in fig["layout"]["title"]["text"]


def test_busbw_figure_plots_rows():
    rows = [{"op": "all_reduce", "ranks": 8, "bytes": 2 ** 20, "time_s": 1e-4,
             "algbw_bytes_per_s": 1e10, "busbw_bytes_per_s": 1.75e10},
            {"op": "all_reduce", "ranks": 8, "bytes": 2 ** 30, "time_s": 3e-3,
             "algbw_bytes_per_s": 3e11, "busbw_bytes_per_s": 5.25e11}]
    fig = charts.busbw_figure(rows).to_plotly_json()
    assert list(fig["data"][0]["y"]) == [17.5, 525.0]
    assert list(fig["data"][0]["x"]) == [2.0 ** 20, 2.0 ** 30]


def test_memory_and_breakdown_figures_carry_the_estimate():
    stages = [{"weights_bytes": 2 * GIB, "gradients_bytes": GIB, "optimizer_bytes": 3 * GIB,
               "activations_bytes": 4 * GIB, "comm_buffers_bytes": 0.5 * GIB, "reserve_bytes": GIB,
               "peak_bytes": 11.5 * GIB}] * 2
    fig = charts.memory_figure(stages, 80 * GIB).to_plotly_json()
    assert fig["layout"]["barmode"] == "stack"
    assert list(trace(fig, "activations")["y"]) == [4.0, 4.0]
    assert any(s.get("y0") == 80.0 for s in fig["layout"]["shapes"])
    gb = charts.memory_figure(stages, 80 * GIB, unit="GB").to_plotly_json()
    assert close(trace(gb, "weights")["y"][0], 2 * GIB / 1e9)
    fig = charts.breakdown_figure({"compute": 0.8, "pp_bubble": 0.2}, 1.0).to_plotly_json()
    assert list(fig["data"][0]["x"]) == [800.0, 200.0]
    assert "80.0%" in fig["data"][0]["text"][0]


def test_validation_figure_has_predicted_measured_and_error_per_case():
    report = {"cases": [{"name": "a", "predicted": 110.0, "measured": 100.0, "unit": "TFLOP/s", "error_pct": 10.0},
                        {"name": "b", "predicted": 95.0, "measured": 100.0, "unit": "TFLOP/s", "error_pct": -5.0}],
              "mape_pct": 7.5, "max_error_pct": 10.0}
    fig = charts.validation_figure(report).to_plotly_json()
    assert list(trace(fig, "predicted")["y"]) == [110.0, 95.0]
    assert list(trace(fig, "measured")["y"]) == [100.0, 100.0]
    assert list(trace(fig, "error %")["y"]) == [10.0, -5.0]


def test_fmt_bytes():
    assert charts.fmt_bytes(1024) == "1 KiB" and charts.fmt_bytes(2 ** 32) == "4 GiB"
    assert charts.fmt_bytes(3 * 2 ** 19) == "1.5 MiB" and charts.fmt_bytes(10) == "10 B"


# ---- uploads, specs and downloads --------------------------------------------------------------

def test_cluster_spec_from_yaml_round_trips_and_validates():
    spec = state.cluster_spec_from_yaml(preset_yaml("dgx-a100", name="my-a100"), "mine.yaml")
    assert len(spec) < state.MAX_SPEC_CHARS and "sources" not in json.loads(spec)
    c = state.cluster_from_spec(spec)
    ref = load_cluster("dgx-a100")
    assert c.name == "my-a100" and c.tiers == ref.tiers and c.device == ref.device
    tiers = yaml.safe_load(CLUSTERS_YAML.read_text())["clusters"]["dgx-a100"]["tiers"]
    tiers[1]["bytes_per_s"] = -1
    with pytest.raises(InputError, match=r"tiers\[1\]\.bytes_per_s"):
        state.cluster_spec_from_yaml(preset_yaml("dgx-a100", tiers=tiers), "bad.yaml")
    with pytest.raises(InputError, match="YAML syntax"):
        state.cluster_spec_from_yaml("tiers: [a, b", "broken.yaml")
    with pytest.raises(InputError, match="mapping"):
        state.cluster_spec_from_yaml("- 1\n- 2\n", "list.yaml")
    evil = state.cluster_from_spec(json.dumps({**json.loads(spec), "name": "../../x"}))
    assert evil.name == "../../x" and not Path("../../x.yaml").exists()
    with pytest.raises(InputError, match="could not determine a constructor|YAML syntax"):
        state.cluster_spec_from_yaml("!!python/object/apply:os.system ['true']", "evil.yaml")


class _Upload:
    def __init__(self, name, data):
        self.name, self._data = name, data

    def getvalue(self):
        return self._data


def test_read_upload_limits_size_and_encoding():
    assert state.read_upload(_Upload("a.yaml", b"x: 1"), "cluster file") == "x: 1"
    with pytest.raises(InputError, match="limit"):
        state.read_upload(_Upload("big.yaml", b"#" * (state.MAX_UPLOAD_BYTES + 1)), "cluster file")
    with pytest.raises(InputError, match="UTF-8"):
        state.read_upload(_Upload("bin.yaml", b"\xff\xfe\x00"), "cluster file")


HF_CONFIG = {"architectures": ["LlamaForCausalLM"], "hidden_act": "silu", "hidden_size": 2048,
             "intermediate_size": 8192, "model_type": "llama", "num_attention_heads": 32,
             "num_hidden_layers": 16, "num_key_value_heads": 8, "vocab_size": 128256,
             "rope_scaling": {"factor": 32.0, "rope_type": "llama3"}, "tie_word_embeddings": True,
             "torch_dtype": "bfloat16", "transformers_version": "4.45.0"}


def test_model_cfg_keeps_what_from_hf_config_reads():
    spec = state.model_cfg_from_text(json.dumps(HF_CONFIG), "config.json")
    assert "rope_scaling" not in spec and "architectures" not in spec
    m = state.model_from_cfg(spec)
    assert m.num_params == from_hf_config(HF_CONFIG, name="x").num_params
    assert m.name == "llama"
    with pytest.raises(InputError, match="num_hidden_layers"):
        state.model_cfg_from_text(json.dumps({**HF_CONFIG, "num_hidden_layers": None}), "config.json")
    with pytest.raises(InputError, match="not valid"):
        state.model_cfg_from_text("{", "config.json")


def test_short_plan_string_round_trips():
    for text in ("dp=8,tp=2,pp=2,mb=1", "dp=2,tp=8,pp=4,vpp=2,mb=1,recompute=selective,sp=on",
                 "dp=4,tp=1,pp=1,cp=8,mb=4,fsdp=on", "dp=16,tp=2,pp=1,ep=4,mb=2,zero=2,offload=on"):
        plan = parse_plan(text)
        assert parse_plan(state.short_plan_string(plan.to_dict())) == plan


def test_csv_and_json_downloads():
    doc = {"a": 1, "b": {"c": [1.5, 2]}, "d": "x"}
    assert state.flatten(doc) == [("a", 1), ("b.c.0", 1.5), ("b.c.1", 2), ("d", "x")]
    rows = list(csv.DictReader(io.StringIO(state.to_csv([{"k": "a", "v": 1}, {"k": "b", "w": 2}]))))
    assert rows == [{"k": "a", "v": "1", "w": ""}, {"k": "b", "v": "", "w": "2"}]
    assert json.loads(state.to_json(doc)) == doc


# ---- Cluster page ---------------------------------------------------------------------------------

def check_busbw(at, cluster, ranks):
    fig = figure(at, "busbw")
    for op in state.CURVE_OPS:
        t = trace(fig, f"{op} ({ranks} ranks)")
        assert len(t["x"]) == len(state.COLLECTIVE_SIZES)
        for nbytes, y in zip(t["x"], t["y"]):
            expect = bus_bandwidth(op, ranks, nbytes, collective_s(cluster, op, ranks, 1, nbytes))[1] / 1e9
            assert close(y, expect), (op, nbytes, y, expect)


def test_cluster_page_default():
    at = ok(app())
    cluster = load_cluster("dgx-h100", nodes=2)
    tiers = table(at, "GB/s/dir")
    assert list(tiers["name"]) == [t.name for t in cluster.tiers]
    assert list(tiers["GB/s/dir"]) == [t.bytes_per_s / 1e9 for t in cluster.tiers]
    assert list(tiers["span"]) == [8, 16]
    check_busbw(at, cluster, 16)
    topo = figure(at, "topology")
    assert "2 nodes × 8 h100-sxm = 16 devices" in topo["layout"]["title"]["text"]
    assert at.query_params == {"cluster": "dgx-h100", "nodes": "2", "ranks": "16"}


def test_cluster_page_from_link_and_widgets():
    at = ok(app(cluster="frontier", nodes=4, ranks=8))
    assert at.selectbox(key="cluster.cluster").value == "frontier"
    check_busbw(at, load_cluster("frontier", nodes=4), 8)
    assert list(table(at, "GB/s/dir")["kind"]) == ["infinity-fabric", "infinity-fabric", "dragonfly"]
    at.number_input(key="cluster.nodes").set_value(16).run()
    at.selectbox(key="cluster.ranks").set_value(128).run()
    ok(at)
    check_busbw(at, load_cluster("frontier", nodes=16), 128)
    assert at.query_params["nodes"] == "16" and at.query_params["ranks"] == "128"


def test_cluster_page_ignores_bad_link_values():
    at = ok(app(cluster="no-such-cluster", nodes="many", ranks=3))
    assert at.query_params == {"cluster": "dgx-h100", "nodes": "2", "ranks": "16"}


def test_cluster_page_upload_and_link_reproduce_it():
    at = app()
    at.selectbox(key="cluster.cluster").set_value(state.CUSTOM).run()
    assert at.file_uploader  # asks for the YAML
    text = preset_yaml("dgx-a100", name="lab-a100", nodes=1, nics_per_node=4)
    at.file_uploader(key="cluster.cluster_file").set_value(("lab.yaml", text.encode(), "application/x-yaml"))
    at.run()
    ok(at)
    spec = at.query_params["cluster_spec"]
    assert json.loads(spec)["name"] == "lab-a100"
    assert "lab-a100: 2 nodes" in figure(at, "topology")["layout"]["title"]["text"]
    custom = state.cluster_from_spec(spec).with_nodes(2)
    check_busbw(at, custom, 16)
    again = ok(app(**dict(at.query_params)))  # a fresh browser opening the link
    assert figure(again, "topology")["layout"]["title"]["text"] == figure(at, "topology")["layout"]["title"]["text"]
    check_busbw(again, custom, 16)


def test_cluster_page_bad_upload_is_one_error_line():
    at = app()
    at.selectbox(key="cluster.cluster").set_value(state.CUSTOM).run()
    at.file_uploader(key="cluster.cluster_file").set_value(
        ("bad.yaml", preset_yaml("dgx-a100", devices_per_node=0).encode(), "application/x-yaml"))
    at.run()
    assert not at.exception
    assert any("devices_per_node" in e.value for e in at.error), [e.value for e in at.error]


# ---- Train page ------------------------------------------------------------------------------------

def direct_estimate(model="llama3-8b", cluster="dgx-h100", nodes=4, seq=4096, batch=64, dtype="bf16",
                    plan="tp=2,pp=2,mb=1", model_spec=None, **flags):
    m = model_spec or load_model(model)
    c = load_cluster(cluster, nodes=nodes)
    job = TrainingJob(model=m, seq_len=seq, global_batch=batch, dtype=dtype, **flags)
    p = parse_plan(plan, c.num_devices)
    return estimate(job, p, c), [stage_memory(m, job, p, s) for s in range(p.pp)]


def check_train(at, est, stages, unit="GiB"):
    rows = {r.quantity: r.value for r in table(at, "quantity").itertuples()}
    assert close(rows["step time"], est.step_time_s)
    assert close(rows["tokens per second"], est.tokens_per_s)
    assert close(rows["TFLOP/s per device"], est.tflops_per_device)
    assert close(rows["MFU"], 100 * est.mfu)
    assert close(rows["peak memory per device"], est.memory["peak_bytes"] / GIB)
    assert rows["fits"] == (1.0 if est.fits else 0.0)
    assert rows["micro-batches per step"] == est.micro_batches
    mem = figure(at, "memory")
    assert mem["layout"]["barmode"] == "stack"
    assert len(trace(mem, "activations")["y"]) == est.plan.pp
    for key, label in charts.MEMORY_PARTS:
        for got, s in zip(trace(mem, label)["y"], stages):
            assert close(got, s[key] / (GIB if unit == "GiB" else 1e9)), (label, got, s[key])
    bd = figure(at, "breakdown")["data"][0]
    assert bd["y"] == [charts.BREAKDOWN_LABELS[k] for k in est.breakdown_s]
    for got, k in zip(bd["x"], est.breakdown_s):
        assert close(got, est.breakdown_s[k] * 1e3)
    st_times = figure(at, "stage_times")["data"][0]["y"]
    assert all(close(a, b * 1e3) for a, b in zip(st_times, est.stage_times_s))
    assert any(est.plan.to_string() in m.value for m in at.markdown)


def test_train_page_default_matches_estimate():
    at = ok(app("train"))
    check_train(at, *direct_estimate())
    assert at.query_params["plan"] == "tp=2,pp=2,mb=1" and at.query_params["model"] == "llama3-8b"
    assert len(at.get("download_button")) == 2


def test_train_page_widgets_drive_the_estimate():
    at = app("train")
    at.selectbox(key="train.model").set_value("llama2-13b")
    at.selectbox(key="train.cluster").set_value("dgx-a100")
    at.number_input(key="train.nodes").set_value(8)
    at.number_input(key="train.seq").set_value(2048)
    at.number_input(key="train.batch").set_value(128)
    at.text_input(key="train.plan").set_value("tp=4,pp=4,vpp=2,mb=1,recompute=selective,sp=on")
    at.run()
    ok(at)
    est, stages = direct_estimate("llama2-13b", "dgx-a100", 8, 2048, 128,
                                  plan="tp=4,pp=4,vpp=2,mb=1,recompute=selective,sp=on")
    check_train(at, est, stages)
    assert at.query_params["cluster"] == "dgx-a100" and at.query_params["nodes"] == "8"
    # The link reproduces the page in a fresh session.
    again = ok(app("train", **dict(at.query_params)))
    check_train(again, est, stages)


def test_train_page_framework_options_and_dtype():
    at = ok(app("train", model="gpt3-6.7b", cluster="dgx-a100", nodes=2, seq=2048, batch=32,
                dtype="fp16", plan="tp=8,mb=2,zero=0", attention="unfused", grad_overlap=0, dropout=1))
    est, stages = direct_estimate("gpt3-6.7b", "dgx-a100", 2, 2048, 32, "fp16", "tp=8,mb=2,zero=0",
                                  flash_attention=False, overlap_grad_reduce=False, dropout=True)
    check_train(at, est, stages)
    assert at.checkbox(key="train.grad_overlap").value is False


def test_train_page_tp_and_p2p_overlap(capsys):
    """The overlap options of `clusterplan simulate train --tp-overlap on --p2p-overlap on`: both
    faces build the job with ui.jobs, so the page shows the CLI's numbers."""
    plan = "tp=8,pp=2,vpp=2,mb=1,sp=on"
    at = ok(app("train", model="llama3-70b", cluster="dgx-h100", nodes=4, seq=4096, batch=64, plan=plan))
    assert at.checkbox(key="train.tp_overlap").value is False and at.checkbox(key="train.p2p_overlap").value is False
    at.checkbox(key="train.tp_overlap").check().run()
    at.checkbox(key="train.p2p_overlap").check().run()
    ok(at)
    est, stages = direct_estimate("llama3-70b", "dgx-h100", 4, 4096, 64, plan=plan,
                                  overlap_tp_comm=True, overlap_p2p_comm=True)
    check_train(at, est, stages)
    assert at.query_params["tp_overlap"] == "1" and at.query_params["p2p_overlap"] == "1"
    plain, _ = direct_estimate("llama3-70b", "dgx-h100", 4, 4096, 64, plan=plan)
    assert est.step_time_s < plain.step_time_s  # the options change the estimate
    from ui.cli import main
    capsys.readouterr()
    assert main(["simulate", "train", "--model", "llama3-70b", "--cluster", "dgx-h100", "--nodes", "4",
                 "--seq-len", "4096", "--global-batch", "64", "--plan", plan, "--tp-overlap", "on",
                 "--p2p-overlap", "on", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["step_time_s"] == est.step_time_s


def test_train_page_bad_plan_is_one_error_line():
    at = app("train", plan="tp=3")
    assert not at.exception
    assert len(at.error) == 1 and "tp" in at.error[0].value and "\n" not in at.error[0].value
    assert not at.get("plotly_chart")
    assert at.query_params["plan"] == "tp=3"  # the link still records what was asked


def test_train_page_uploaded_config():
    at = app("train")
    at.selectbox(key="train.model").set_value(state.CUSTOM).run()
    at.file_uploader(key="train.model_file").set_value(("config.json", json.dumps(HF_CONFIG).encode(),
                                                         "application/json"))
    at.run()
    ok(at)
    est, stages = direct_estimate(model_spec=from_hf_config(HF_CONFIG, name="llama"))
    check_train(at, est, stages)
    assert "model_cfg" in at.query_params
    again = ok(app("train", **dict(at.query_params)))
    check_train(again, est, stages)


def test_train_page_display_widget_uses_the_cache():
    at = ok(app("train", plan="tp=8,pp=1,mb=1"))
    misses = state.CALLS["train_estimate"]
    at.radio(key="train.mem_unit").set_value("GB").run()
    ok(at)
    assert state.CALLS["train_estimate"] == misses  # display-only: no new estimate
    est, stages = direct_estimate(plan="tp=8,pp=1,mb=1")
    assert close(trace(figure(at, "memory"), "weights")["y"][0], stages[0]["weights_bytes"] / 1e9)
    assert at.query_params["mem_unit"] == "GB"
    at.text_input(key="train.plan").set_value("tp=4,pp=2,mb=1").run()
    assert state.CALLS["train_estimate"] == misses + 1  # a new plan is computed once
    at.text_input(key="train.plan").set_value("tp=8,pp=1,mb=1").run()
    assert state.CALLS["train_estimate"] == misses + 1  # and going back is a cache hit
    check_train(ok(at), est, stages, unit="GB")


@pytest.mark.skipif(not state.search_available(), reason="planner.search is not in this checkout")
def test_train_page_plan_search_and_use_a_found_plan():
    from planner.search import search
    at = ok(app("train", plan="tp=8,mb=1"))
    assert not at.get("plotly_chart") or all(e.key != "search" for e in at.get("plotly_chart"))
    at.number_input(key="train.top").set_value(3)
    at.button(key="search_go").click().run()
    ok(at)
    m = load_model("llama3-8b")
    c = load_cluster("dgx-h100", nodes=4)
    expect = search(TrainingJob(model=m, seq_len=4096, global_batch=64), c, top=3).to_dict()["plans"]
    rows = table(at, "why")
    assert [parse_plan(p) for p in rows["plan"]] == [parse_plan(p["plan_string"]) for p in expect]
    assert all(close(a, p["step_time_s"]) for a, p in zip(rows["step_time_s"], expect))
    assert all(close(a, p["tokens_per_s"]) for a, p in zip(figure(at, "search")["data"][0]["y"], expect))
    assert at.query_params["search"] == "1" and at.query_params["top"] == "3"
    # Simulate the second plan found: the estimate above the search switches to it.
    at.selectbox(key="search_pick").set_value(rows["plan"][1])
    at.button(key="search_use").click().run()
    ok(at)
    assert parse_plan(at.text_input(key="train.plan").value) == parse_plan(expect[1]["plan_string"])
    est, stages = direct_estimate(plan=expect[1]["plan_string"])
    check_train(at, est, stages)
    assert close(est.step_time_s, expect[1]["step_time_s"])
    again = ok(app("train", **dict(at.query_params)))  # the link shows the search again
    assert list(table(again, "why")["plan"]) == list(rows["plan"])


def test_train_page_search_with_impossible_fix_is_an_error_line():
    if not state.search_available():
        pytest.skip("planner.search is not in this checkout")
    at = app("train", search=1, fix="tp=3")
    assert not at.exception
    assert len(at.error) == 1 and "\n" not in at.error[0].value
    assert any(e.key == "memory" for e in at.get("plotly_chart"))  # the estimate still shows


# ---- Validate page -----------------------------------------------------------------------------------

def test_validate_page_matches_published_report():
    from validation.published import megatron_table1
    report = megatron_table1()
    at = ok(app("validate"))
    cases = table(at, "error_pct")
    assert list(cases["name"]) == [c["name"] for c in report["cases"]]
    assert list(cases["predicted"]) == [c["predicted"] for c in report["cases"]]
    assert list(cases["measured"]) == [c["measured"] for c in report["cases"]]
    assert list(cases["error_pct"]) == [c["error_pct"] for c in report["cases"]]
    fig = figure(at, "validation")
    assert list(trace(fig, "predicted")["y"]) == [c["predicted"] for c in report["cases"]]
    assert list(trace(fig, "measured")["y"]) == [c["measured"] for c in report["cases"]]
    assert list(trace(fig, "error %")["y"]) == [c["error_pct"] for c in report["cases"]]
    assert f"{report['mape_pct']:.1f}%" in [m.value for m in at.metric]
    assert at.query_params == {"suite": "published"}
    assert len(at.get("download_button")) == 2


def test_every_page_is_registered():
    at = app()
    for page in ("cluster", "train", "validate"):
        at.switch_page(f"pages/{page}.py").run()
        ok(at)
        assert at.title[0].value == page.capitalize()


def test_cluster_presets_all_render():
    at = app()
    for name in cluster_names():
        at.selectbox(key="cluster.cluster").set_value(name).run()
        ok(at)
        assert figure(at, "topology")["layout"]["title"]["text"].startswith(f"{name}:")


# ---- `clusterplan ui` ----------------------------------------------------------------------------------

def test_cli_ui_rejects_a_bad_port(capsys):
    from ui.cli import main
    assert main(["ui", "--port", "70000"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("clusterplan: error:") and "65535" in err and "\n" not in err


def test_cli_ui_command_line():
    from ui.cli import build_parser, dashboard
    args = build_parser().parse_args(["ui", "--port", "8601", "--headless"])
    argv = dashboard.streamlit_argv(args)
    assert argv[1:4] == ["-m", "streamlit", "run"] and Path(argv[4]) == Path(APP)
    assert argv[argv.index("--server.port") + 1] == "8601" and "--server.headless" in argv


def test_cli_ui_serves_the_app():
    import socket
    import subprocess
    import sys
    import time
    import urllib.request
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "ui.cli", "ui", "--port", str(port), "--headless",
                             "--host", "127.0.0.1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                    assert r.read().strip() == b"ok"
                    break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
                assert time.time() < deadline, "clusterplan ui did not serve within 60 s"
                time.sleep(0.3)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/train", timeout=5) as r:
            assert r.status == 200
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_train_page_des_timeline_matches_the_simulation():
    from simulator.des import simulate
    at = ok(app("train", plan="tp=2,pp=4,mb=1"))
    assert all(e.key != "gantt" for e in at.get("plotly_chart"))
    at.button(key="des_go").click().run()
    ok(at)
    gantt = figure(at, "gantt")["data"][0]
    est, res = simulate(TrainingJob(model=load_model("llama3-8b"), seq_len=4096, global_batch=64),
                        parse_plan("tp=2,pp=4,mb=1", 32), load_cluster("dgx-h100", nodes=4), trace=True)
    assert len(gantt["x"]) == len(res.timeline)
    assert close(max(b + w for b, w in zip(gantt["base"], gantt["x"])), res.step_time_s * 1e3, rel=1e-6)
    assert at.query_params["des"] == "1"
