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
from simulator.regimes import fleet_trust_notes, validation_label
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


def tier_table(at: AppTest):
    """The Cluster page's tier table (an st.table, so long tier names wrap instead of being cut)."""
    found = [t.value for t in at.table if "GB/s/dir" in t.value.columns]
    assert found, "no tier table"
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
                 "dp=4,tp=1,pp=1,cp=8,mb=4,fsdp=on", "dp=16,tp=2,pp=1,ep=4,mb=2,zero=2,offload=on",
                 "dp=8,tp=2,pp=2,mb=1,recompute=full,recompute_layers=3,recompute_method=uniform"):
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
    tiers = tier_table(at)
    assert list(tiers["name"]) == [t.name for t in cluster.tiers]
    assert [float(v) for v in tiers["GB/s/dir"]] == [t.bytes_per_s / 1e9 for t in cluster.tiers]
    assert list(tiers["span"]) == ["8", "16"]
    check_busbw(at, cluster, 16)
    topo = figure(at, "topology")
    assert "2 nodes × 8 h100-sxm = 16 devices" in topo["layout"]["title"]["text"]
    assert at.query_params == {"cluster": "dgx-h100", "nodes": "2", "ranks": "16"}


def test_cluster_page_from_link_and_widgets():
    at = ok(app(cluster="frontier", nodes=4, ranks=8))
    assert at.selectbox(key="cluster.cluster").value == "frontier"
    check_busbw(at, load_cluster("frontier", nodes=4), 8)
    assert list(tier_table(at)["kind"]) == ["infinity-fabric", "infinity-fabric", "dragonfly"]
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
    scale = GIB if unit == "GiB" else 1e9
    assert close(rows["peak memory per device"], est.memory["peak_bytes"] / scale)
    assert close(rows["memory headroom"], (est.memory["hbm_bytes"] - est.memory["peak_bytes"]) / scale)
    units = {r.quantity: r.unit for r in table(at, "quantity").itertuples()}
    assert units["peak memory per device"] == unit and "yes=1" not in units.values()
    peak = next(m for m in at.metric if m.label == "Peak memory")
    assert peak.value == f"{est.memory['peak_bytes'] / scale:.1f} {unit}"
    assert (("fits in" if est.fits else "does NOT fit") in peak.delta) and peak.delta.endswith(unit)
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


def test_train_page_software_profile_fills_the_options_and_its_plan_keys(capsys):
    """Picking a software profile (clusterplan --software) sets the framework inputs to the
    profile's settings and applies its fixed plan keys: llm-foundry = FSDP (zero=3) with the Triton
    flash port and no dropout; the page then shows the CLI's numbers."""
    at = ok(app("train", model="llama2-7b", cluster="dgx-a100", nodes=1, seq=4096, batch=64, plan="mb=1"))
    at.selectbox(key="train.software").set_value("llm-foundry").run()
    ok(at)
    assert at.radio(key="train.attention_kernel").value == "fa-triton"
    assert at.checkbox(key="train.dropout").value is False and at.checkbox(key="train.tp_overlap").value is False
    est, stages = direct_estimate("llama2-7b", "dgx-a100", 1, 4096, 64, plan="mb=1,zero=3",
                                  attention_kernel="fa-triton", dropout=False)
    check_train(at, est, stages)
    from ui.cli import main
    capsys.readouterr()
    assert main(["simulate", "train", "--model", "llama2-7b", "--cluster", "dgx-a100", "--nodes", "1",
                 "--seq-len", "4096", "--global-batch", "64", "--plan", "mb=1", "--software", "llm-foundry",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["step_time_s"] == pytest.approx(est.step_time_s, rel=1e-12)


def test_train_page_lora_options_are_the_clis(capsys):
    """LoRA (clusterplan --lora-rank 32 --lora-targets qkv): the page and the CLI build the same job,
    and an unknown target is one error line."""
    plan = "tp=2,pp=4,vpp=20,mb=1,sp=on,schedule=interleaved"
    at = ok(app("train", model="llama3-70b", cluster="dgx-h100", nodes=1, seq=4096, batch=32, plan=plan))
    at.number_input(key="train.lora_rank").set_value(32)
    at.text_input(key="train.lora_targets").set_value("qkv").run()
    ok(at)
    est, stages = direct_estimate("llama3-70b", "dgx-h100", 1, 4096, 32, plan=plan, lora_rank=32,
                                  lora_targets=("qkv",))
    check_train(at, est, stages)
    full, _ = direct_estimate("llama3-70b", "dgx-h100", 1, 4096, 32, plan=plan)
    assert est.step_time_s < 0.85 * full.step_time_s
    from ui.cli import main
    capsys.readouterr()
    assert main(["simulate", "train", "--model", "llama3-70b", "--cluster", "dgx-h100", "--nodes", "1",
                 "--seq-len", "4096", "--global-batch", "32", "--plan", plan, "--lora-rank", "32",
                 "--lora-targets", "qkv", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["step_time_s"] == pytest.approx(est.step_time_s, rel=1e-12)
    at.text_input(key="train.lora_targets").set_value("qkv,mlp").run()
    assert not at.exception and len(at.error) == 1 and "lora targets qkv,mlp" in at.error[0].value


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
    at.selectbox(key="train.pick").set_value(rows["plan"][1])
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
    for page in ("cluster", "train", "serve", "validate"):
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


# ---- dashboard faults a new user hit (issue 20 §2) ------------------------------------------------

def test_train_page_custom_model_before_upload_is_one_info_not_an_error():
    """Choosing "custom (upload)" asks for the file once (an info line); no error before anything
    is uploaded, and no result of the previous model stays on screen."""
    at = ok(app("train"))
    assert at.get("plotly_chart")
    at.selectbox(key="train.model").set_value(state.CUSTOM).run()
    assert not at.exception and not at.error
    assert len(at.info) == 1 and "config.json" in at.info[0].value
    assert not at.get("plotly_chart") and not at.metric
    assert at.query_params["model"] == state.CUSTOM


def test_train_page_broken_upload_clears_the_previous_model():
    at = app("train")
    at.selectbox(key="train.model").set_value(state.CUSTOM).run()
    at.file_uploader(key="train.model_file").set_value(("config.json", json.dumps(HF_CONFIG).encode(),
                                                         "application/json"))
    at.run()
    ok(at)
    assert at.get("plotly_chart") and "model_cfg" in at.query_params
    broken = {k: v for k, v in HF_CONFIG.items() if k != "num_hidden_layers"}
    at.file_uploader(key="train.model_file").set_value(("config.json", json.dumps(broken).encode(),
                                                         "application/json"))
    at.run()
    assert not at.exception
    assert len(at.error) == 1 and "num_hidden_layers" in at.error[0].value
    assert not at.get("plotly_chart") and not at.metric and not at.dataframe  # nothing of the old model
    assert "model_cfg" not in at.query_params


def test_cluster_page_custom_before_upload_and_after_a_broken_one():
    at = app()
    at.selectbox(key="cluster.cluster").set_value(state.CUSTOM).run()
    assert not at.exception and not at.error and len(at.info) == 1 and "cluster YAML" in at.info[0].value
    assert not at.get("plotly_chart")
    at.file_uploader(key="cluster.cluster_file").set_value(
        ("lab.yaml", preset_yaml("dgx-a100", name="lab-a100").encode(), "application/x-yaml"))
    at.run()
    ok(at)
    assert "lab-a100" in figure(at, "topology")["layout"]["title"]["text"]
    at.file_uploader(key="cluster.cluster_file").set_value(
        ("bad.yaml", preset_yaml("dgx-a100", devices_per_node=0).encode(), "application/x-yaml"))
    at.run()
    assert len(at.error) == 1 and not at.get("plotly_chart") and not at.metric


def test_cluster_page_tier_table_shows_whole_names():
    """Tier names are drawn as text that wraps (st.table), never cut at a grid column's width."""
    at = app()
    at.selectbox(key="cluster.cluster").set_value("frontier").run()
    ok(at)
    names = list(tier_table(at)["name"])
    assert names == [t.name for t in load_cluster("frontier").tiers]
    assert all(isinstance(v, str) for v in tier_table(at)["GB/s/dir"])


def test_train_page_memory_unit_changes_metric_table_and_chart():
    at = ok(app("train", plan="tp=8,pp=1,mb=1"))
    est, stages = direct_estimate(plan="tp=8,pp=1,mb=1")
    check_train(at, est, stages, unit="GiB")
    at.radio(key="train.mem_unit").set_value("GB").run()
    check_train(ok(at), est, stages, unit="GB")
    assert next(m for m in at.metric if m.label == "Peak memory").value.endswith(" GB")


def test_train_page_search_table_follows_the_memory_unit():
    if not state.search_available():
        pytest.skip("planner.search is not in this checkout")
    at = ok(app("train", search=1, top=3, mem_unit="GB"))
    rows = table(at, "why")
    assert "peak_GB" in rows.columns and "peak_GiB" not in rows.columns
    at.radio(key="train.mem_unit").set_value("GiB").run()
    assert "peak_GiB" in table(ok(at), "why").columns


# ---- Train page: Pareto scatter of the searched plans -------------------------------------------------

def test_search_rows_pareto_front_and_selection():
    doc = {"plans": [
        {"plan": parse_plan("tp=8,mb=1").to_dict(), "num_devices": 8, "step_time_s": 1.0, "tokens_per_s": 1,
         "mfu": 0.5, "memory": {"peak_bytes": 40 * GIB}, "cost_per_step_usd": 0.01},
        {"plan": parse_plan("tp=4,mb=1").to_dict(), "num_devices": 8, "step_time_s": 1.2, "tokens_per_s": 1,
         "mfu": 0.4, "memory": {"peak_bytes": 30 * GIB}, "cost_per_step_usd": 0.012},
        {"plan": parse_plan("tp=2,mb=1").to_dict(), "num_devices": 8, "step_time_s": 1.3, "tokens_per_s": 1,
         "mfu": 0.3, "memory": {"peak_bytes": 45 * GIB}, "cost_per_step_usd": 0.013}]}
    rows = state.search_rows(doc)
    assert [r["pareto"] for r in rows] == [True, True, False]  # the third is slower, bigger and dearer
    assert close(state.search_rows(doc, "GB")[0]["peak_GB"], 40 * GIB / 1e9)
    fig = charts.plan_pareto_figure(rows, "GiB", rows[1]["plan"]).to_plotly_json()
    front = trace(fig, "Pareto front")
    assert [c[0] for c in front["customdata"]] == [rows[0]["plan"], rows[1]["plan"]]
    assert list(front["x"]) == [1000.0, 1200.0] and list(front["y"]) == [40.0, 30.0]
    assert trace(fig, "selected")["customdata"][0][0] == rows[1]["plan"]
    plans = [r["plan"] for r in rows]
    click = {"selection": {"points": [{"customdata": [rows[2]["plan"], 3, 0.013]}]}}
    assert state.plan_from_selection(click, plans) == rows[2]["plan"]
    assert state.plan_from_selection({"selection": {"points": []}}, plans) is None
    assert state.plan_from_selection({"selection": {"points": [{"customdata": ["tp=3"]}]}}, plans) is None


@pytest.mark.skipif(not state.search_available(), reason="planner.search is not in this checkout")
def test_train_page_search_pareto_chart_matches_the_search():
    at = ok(app("train", search=1, top=4))
    rows = table(at, "why")
    fig = figure(at, "search_pareto")
    shown = {c[0]: (x, y) for t in fig["data"] if t.get("name") in ("Pareto front", "other plans")
             for c, x, y in zip(t["customdata"], t["x"], t["y"])}
    assert set(shown) == set(rows["plan"])
    for r in rows.itertuples():
        assert close(shown[r.plan][0], r.step_time_s * 1e3) and close(shown[r.plan][1], r.peak_GiB)
    assert trace(fig, "selected")["customdata"][0][0] == rows["plan"][0]


# ---- Validate page: collectives, serving and own-harness summaries --------------------------------

def test_validate_page_collectives_groups_match_the_library():
    from validation.collectives import validate_collectives
    report = validate_collectives()
    at = ok(app("validate", suite="collectives"))
    groups = state.validation_groups(report, "collectives")
    shown = table(at, "median_error_pct")
    assert list(shown["group"]) == [g["group"] for g in groups]
    assert list(shown["cases"]) == [g["cases"] for g in groups] and sum(shown["cases"]) == len(report["cases"])
    fig = figure(at, "validation_groups")
    bars = trace(fig, "median error % (bars: p10..p90)")
    assert all(close(y, g["median_error_pct"]) for y, g in zip(bars["y"], groups))
    assert all(close(m + up, g["p90_error_pct"]) for m, up, g in zip(bars["y"], bars["error_y"]["array"], groups))
    assert f"{report['mape_pct']:.1f}%" in [m.value for m in at.metric]
    errs = [c["error_pct"] for c in report["cases"]
            if f"{c.get('system', '?')} {c.get('op', '?')}" == groups[0]["group"] and c.get("error_pct") is not None]
    assert close(groups[0]["mape_pct"], sum(abs(e) for e in errs) / len(errs))


def test_validate_page_serving_summary_by_engine_and_system():
    from validation.serving import run_suite
    report = run_suite(quick=True, limit=20, jobs=1)
    at = ok(app("validate", suite="serving", rows=20))
    groups = table(at, "median_error_pct")
    assert sum(groups["cases"]) == len(report["cases"])
    engines = {r["engine"] for r in report["rows"]}
    assert {g.split()[0] for g in groups["group"]} == engines
    assert {g.split()[-1] for g in groups["group"]} <= {"ttft", "tpot"}
    assert f"{report['mape_pct']:.1f}%" in [m.value for m in at.metric]


def test_validate_page_own_harness_with_measured_spread():
    at = ok(app("validate", suite="harness"))
    report = state._harness()
    cases = table(at, "error_pct")
    assert list(cases["name"]) == [c["name"] for c in report["cases"]]
    fig = figure(at, "validation")
    measured = trace(fig, "measured")
    c0 = report["cases"][0]
    assert close(measured["error_y"]["array"][0], c0["measured_p90"] - c0["measured"])
    assert close(measured["error_y"]["arrayminus"][0], c0["measured"] - c0["measured_p10"])


# ---- Serve page -------------------------------------------------------------------------------------

SERVE_Q = dict(model="llama3-8b", devices="h100-sxm:2,a100-sxm-80g:2", rate=2.0, prompt_len="512",
               output_len="128", requests=100, seed=0, slo_ttft_ms=2000.0, slo_tpot_ms=100.0, percentile=90,
               engine="vllm", dtype="bf16", disagg="off", classes=1)


def direct_plan_serve(**over):
    from planner.serve_search import parse_devices, plan_serving
    from ui import jobs
    q = {**SERVE_Q, **over}
    wl = jobs.plan_serve_workload(q["prompt_len"], q["output_len"], q["requests"], q["seed"], q["rate"])
    return plan_serving(load_model(q["model"]), parse_devices(q["devices"]), wl, q["rate"], q["slo_ttft_ms"] / 1e3,
                        q["slo_tpot_ms"] / 1e3, q["percentile"], q["requests"], q["seed"], q["engine"], q["dtype"],
                        None, disagg=q["disagg"], classes=q["classes"], jobs=1)


@pytest.fixture(scope="module")
def serve_doc():
    return direct_plan_serve()


def test_serve_page_waits_for_the_button():
    at = ok(app("serve"))
    assert not at.get("plotly_chart") and len(at.info) == 1 and "Plan fleet" in at.info[0].value
    assert at.query_params["devices"] == "h100-sxm:8:2.49,a100-sxm-80g:8:1.49"


def test_serve_page_plan_matches_the_library(serve_doc):
    at = ok(app("serve", run=1, **SERVE_Q))
    doc = serve_doc
    fleets = table(at, "meets SLO")
    assert list(fleets["$/h"]) == [f["cost_per_hour"] for f in doc["fleets"]]
    assert list(fleets["replicas"]) == [state.fleet_label(f) for f in doc["fleets"]]
    assert all(close(a, f["predicted"]["ttft_s"] * 1e3) for a, f in zip(fleets["p90 TTFT ms"], doc["fleets"]))
    best = doc["fleets"][0]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Cheapest fleet"] == f"${best['cost_per_hour']:,.2f}/h"
    assert metrics["p90 TTFT"] == f"{best['predicted']['ttft_s'] * 1e3:,.1f} ms"
    caps = trace(figure(at, "capacities"), "aggregated")
    assert all(close(y, c["rate_per_replica"]) for y, c in zip(caps["y"], doc["capacities"]))
    pareto = figure(at, "pareto")
    front = [t for t in pareto["data"] if t.get("name") == "Pareto front"][0]
    assert [c[0] for c in front["customdata"]] == [p["replicas"] for p in doc["pareto"]]
    assert all(close(y, p["ttft_s"] * 1e3) for y, p in zip(front["y"], doc["pareto"]))
    assert at.query_params["fleet"] == state.fleet_label(best)
    assert len(at.get("download_button")) == 5  # plan JSON + CSV; run JSON, CSV, Chrome trace
    # how far to trust each fleet: its label in the table, each regime's note under it
    assert list(fleets["validated (median |err| TTFT / TPOT)"]) == [
        validation_label(f["validation"]) for f in doc["fleets"]]
    trust = [c.value for c in at.caption if c.value.startswith("trust: ")]
    assert trust == [f"trust: {n}" for n in fleet_trust_notes(doc["fleets"])] and trust


def test_serve_page_des_check_reproduces_the_planners_check(serve_doc):
    """The selected fleet's CDFs come from re-running the fleet as plan serve checked it: the SLO
    percentile of the plotted TTFTs is the planner's own number."""
    import numpy as np
    at = ok(app("serve", run=1, **SERVE_Q))
    best = serve_doc["fleets"][0]
    cdf = figure(at, "cdf")
    ttft = trace(cdf, "TTFT")["x"]
    assert close(np.percentile(np.asarray(ttft) / 1e3, 90), best["predicted"]["ttft_s"], rel=1e-9)
    tpot = trace(cdf, "TPOT")["x"]
    assert close(np.percentile(np.asarray(tpot) / 1e3, 90), best["predicted"]["tpot_s"], rel=1e-9)
    assert list(trace(cdf, "TTFT SLO")["x"]) == [SERVE_Q["slo_ttft_ms"]] * 2  # the SLO lines
    assert list(trace(cdf, "TPOT SLO")["x"]) == [SERVE_Q["slo_tpot_ms"]] * 2
    gantt = figure(at, "serve_gantt")
    assert sum(len(t["x"]) for t in gantt["data"]) > 0
    tl = figure(at, "replica_timeline")
    assert len([t for t in tl["data"] if t.get("showlegend") is not False]) == sum(r["count"] for r in best["replicas"])


def test_fleet_serving_plan_matches_every_verified_fleet(serve_doc):
    from simulator.serving.engine import simulate
    from ui import jobs
    for f in serve_doc["fleets"]:
        nrep = sum(r["count"] for r in f["replicas"])
        wl = jobs.plan_serve_workload("512", "128", max(100, min(5000, 100 * nrep)), 0, 2.0)
        rep = simulate(load_model("llama3-8b"), jobs.fleet_serving_plan(f), wl)
        assert rep.ttft_s["p90"] == f["predicted"]["ttft_s"] and rep.tpot_s["p90"] == f["predicted"]["tpot_s"]


def test_serve_page_select_fleet_then_simulate_it(serve_doc):
    from simulator.serving.engine import simulate
    from simulator.serving.workload import LengthDist, ServingWorkload
    from ui import jobs
    at = ok(app("serve", run=1, **SERVE_Q))
    misses = state.CALLS["plan_serve"]
    second = state.fleet_label(serve_doc["fleets"][1])
    at.selectbox(key="serve.fleet").set_value(second).run()
    ok(at)
    assert state.CALLS["plan_serve"] == misses  # a display choice: the plan comes from the cache
    assert at.query_params["fleet"] == second
    at.button(key="sim_go").click().run()
    at.radio(key="serve.load").set_value("concurrency").run()
    at.number_input(key="serve.concurrency").set_value(4).run()
    at.number_input(key="serve.sim_requests").set_value(60).run()
    ok(at)
    wl = ServingWorkload(concurrency=4, prompt_len=LengthDist.parse("512"), output_len=LengthDist.parse("128"),
                         num_requests=60, seed=0, slo_ttft_s=2.0, slo_tpot_s=0.1)
    rep = simulate(load_model("llama3-8b"), jobs.fleet_serving_plan(serve_doc["fleets"][1]), wl)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Throughput"] == f"{rep.throughput_requests_per_s:,.2f} req/s"
    assert metrics["p90 TTFT"] == f"{rep.ttft_s['p90'] * 1e3:,.1f} ms"
    assert at.query_params["sim"] == "1" and at.query_params["load"] == "concurrency"


def test_serve_page_replays_an_uploaded_trace(serve_doc):
    from simulator.serving.engine import simulate
    from simulator.serving.workload import ServingWorkload
    from ui import jobs
    text = "TIMESTAMP,ContextTokens,GeneratedTokens\n" + "".join(
        f"2023-11-16 18:15:{i // 10:02d}.{(i % 10) * 100000:06d},{200 + 37 * i},{20 + i}\n" for i in range(30))
    at = ok(app("serve", run=1, sim=1, load="trace", **SERVE_Q))
    assert len(at.info) == 1 and "trace" in at.info[0].value  # asks for the file, no error
    at.file_uploader(key="serve.trace_file").set_value(("azure.csv", text.encode(), "text/csv"))
    at.run()
    ok(at)
    rows, fmt = state.trace_from_text(text, "azure.csv")
    assert fmt == "azure" and len(rows) == 30
    wl = ServingWorkload(trace=[(a, p, o, tuple(k), kt) for a, p, o, k, kt in rows], trace_name="azure.csv (azure)",
                         num_requests=500, seed=0, slo_ttft_s=2.0, slo_tpot_s=0.1)
    rep = simulate(load_model("llama3-8b"), jobs.fleet_serving_plan(serve_doc["fleets"][0]), wl)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Throughput"] == f"{rep.throughput_requests_per_s:,.2f} req/s"


def test_serve_page_bad_inputs_are_one_error_line():
    at = app("serve", run=1, **{**SERVE_Q, "prompt_len": "abc"})
    assert not at.exception and len(at.error) == 1 and "prompt" in at.error[0].value.lower()
    assert "\n" not in at.error[0].value and not at.get("plotly_chart")
    at = app("serve", run=1, **{**SERVE_Q, "devices": "h100-sxm:two"})
    assert not at.exception and any("COUNT" in e.value for e in at.error)
    at = app("serve", run=1, **{**SERVE_Q, "prompt_len": "200000"})  # beyond llama3-8b's context
    assert not at.exception and len(at.error) == 1 and "context" in at.error[0].value


def test_plan_serve_progress_counts_every_capacity_probe():
    calls = []
    doc = state.plan_serve("llama3-8b", None, "h100-sxm:2", 2.0, "512", "64", 2.0, 0.1, 90, 60, 1, "vllm", "bf16",
                           "off", 1, _progress=lambda d, t, lab: calls.append((d, t, lab)))
    assert calls and [d for d, _, _ in calls] == list(range(1, len(doc["capacities"]) + 1))
    assert {t for _, t, _ in calls} == {len(doc["capacities"])}


def test_fleet_from_selection_and_pareto_extras(serve_doc):
    fleets = state.selectable_fleets(serve_doc)
    labels = [f["label"] for f in fleets]
    assert labels[:len(serve_doc["fleets"])] == [state.fleet_label(f) for f in serve_doc["fleets"]]
    assert {p["replicas"] for p in serve_doc["pareto"]} <= set(labels)
    for f in fleets[len(serve_doc["fleets"]):]:  # the 1.5x / 2x front fleets, parsed back to replicas
        assert state.fleet_label(f) == f["label"]
    click = {"selection": {"points": [{"customdata": [labels[-1]]}]}}
    assert state.fleet_from_selection(click, fleets) == labels[-1]
    assert state.fleet_from_selection({"selection": {"points": []}}, fleets) is None
    assert state.fleet_from_selection({"selection": {"points": [{"customdata": ["9× b200 tp=8"]}]}}, fleets) is None
    fig = charts.pareto_figure(fleets, "p90", labels[0]).to_plotly_json()
    assert trace(fig, "selected")["customdata"][0][0] == labels[0]


def test_pool_table_round_trips_the_devices_string():
    rows = state.pool_rows("h100-sxm:4,a100-sxm-80g:2:1.2")
    assert rows == [{"device": "h100-sxm", "count": 4, "price_per_hour": 2.49},
                    {"device": "a100-sxm-80g", "count": 2, "price_per_hour": 1.2}]
    assert state.pool_text(rows + [{"device": None, "count": None, "price_per_hour": None}]) == \
        "h100-sxm:4:2.49,a100-sxm-80g:2:1.2"
    with pytest.raises(InputError, match="COUNT"):
        state.pool_text([{"device": "h100-sxm", "count": 0, "price_per_hour": None}])
