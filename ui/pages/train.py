"""Train page: one training plan through the analytic engine (simulator.analytic.estimate)."""
import json

import streamlit as st

from hwmodels.errors import InputError
from simulator.models import preset_names
from simulator.training import DTYPES
from ui import charts, state

st.title("Train")
st.caption("Predict one training step of a plan: time, throughput, MFU and per-device memory.")
ps = state.PageState("train")

models = preset_names() + [state.CUSTOM]
c1, c2 = st.columns([1, 1])
with c1:
    km = ps.init("model", "llama3-8b", choices=models)
    ps.init("model_cfg", None)  # compact JSON of an uploaded config (from the link or the upload)
    st.selectbox("Model", models, key=km, help="a preset from simulator/data/models.yaml, or a "
                 "Hugging Face config.json")
    model_ref, model_cfg = ps.get("model"), None
    if model_ref == state.CUSTOM:
        up = state.file_uploader("Hugging Face config.json (or YAML with the same keys)",
                                 ["json", "yaml", "yml"], ps.key("model_file"))
        if up is not None:
            try:
                ps.set("model_cfg", state.model_cfg_from_text(state.read_upload(up, "model file"), up.name))
            except InputError as e:
                st.error(str(e))
        model_cfg = ps.get("model_cfg")
        if model_cfg is not None:
            st.caption(f"custom model {json.loads(model_cfg).get('_name', 'custom')!r} "
                       f"({'from the upload' if up is not None else 'from the link'})")
    else:
        ps.set("model_cfg", None)
with c2:
    cluster_ref, cluster_spec, nodes = state.cluster_picker(ps, default="dgx-h100", default_nodes=4)

c = st.columns([1, 1, 1, 3])
c[0].number_input("Sequence length", min_value=1, max_value=10_000_000, step=1024,
                  key=ps.init("seq", 4096, int, lo=1, hi=10_000_000))
c[1].number_input("Global batch (sequences)", min_value=1, max_value=10_000_000, step=1,
                  key=ps.init("batch", 64, int, lo=1, hi=10_000_000))
c[2].selectbox("Precision", list(DTYPES), key=ps.init("dtype", "bf16", choices=list(DTYPES)))
c[3].text_input("Plan", key=ps.init("plan", "tp=2,pp=2,mb=1"),
                help="key=value,... with keys dp tp pp cp ep mb vpp zero recompute schedule sp offload "
                     "fsdp; dp is derived when omitted (e.g. tp=8,pp=4,vpp=2,mb=1,recompute=selective,sp=on)")
with st.expander("Framework options"):
    o = st.columns(3)
    o[0].radio("Attention kernels", ["flash", "unfused"], horizontal=True,
               key=ps.init("attention", "flash", choices=["flash", "unfused"]))
    o[1].checkbox("Overlap DP gradient reduction with backward", key=ps.init("grad_overlap", True, bool))
    o[2].checkbox("Dropout layers", key=ps.init("dropout", True, bool))
    o = st.columns(3)
    o[0].checkbox("Overlap TP communication with GEMMs (needs sp=on)", key=ps.init("tp_overlap", False, bool),
                  help="Transformer Engine userbuffers (clusterplan --tp-overlap)")
    o[1].checkbox("Overlap pipeline send/recv with compute", key=ps.init("p2p_overlap", False, bool),
                  help="off: a send blocks its stage (clusterplan --p2p-overlap)")

inputs = dict(model_ref=model_ref, model_cfg=model_cfg, cluster_ref=cluster_ref, cluster_spec=cluster_spec,
              nodes=nodes, seq_len=ps.get("seq"), global_batch=ps.get("batch"),
              dtype=ps.get("dtype"), attention=ps.get("attention"), grad_overlap=ps.get("grad_overlap"),
              tp_overlap=ps.get("tp_overlap"), p2p_overlap=ps.get("p2p_overlap"), dropout=ps.get("dropout"))
SEARCH = state.search_available()
if SEARCH:
    ps.init("search", False, bool)
    ps.init("fix", "")
    ps.init("top", 5, int, lo=1, hi=50)
ps.init("mem_unit", "GiB", choices=["GiB", "GB"])
ps.init("des", False, bool)
ps.sync_url()  # every input is in session state now; a button callback changes it before the run


def show_estimate():
    try:
        with st.spinner("Estimating..."):
            result = state.train_estimate(plan=ps.get("plan"), **inputs)
    except InputError as e:
        st.error(str(e))
        return
    est = result["estimate"]
    mem = est["memory"]
    st.markdown(f"**{est['model']}** on **{est['cluster']}** ({est['num_devices']} devices) · plan "
                f"`{est['plan_string']}` · {est['micro_batches']} micro-batches per step")
    m = st.columns(5)
    step = est["step_time_s"]
    m[0].metric("Step time", f"{step:,.2f} s" if step >= 10 else f"{step * 1e3:,.1f} ms")
    m[1].metric("Tokens/s", f"{est['tokens_per_s']:,.0f}")
    m[2].metric("TFLOP/s per device", f"{est['tflops_per_device']:.1f}")
    m[3].metric("MFU", f"{100 * est['mfu']:.1f}%")
    m[4].metric("Peak memory", f"{mem['peak_bytes'] / 2**30:.1f} GiB",
                f"{'fits' if est['fits'] else 'does NOT fit'} in {mem['hbm_bytes'] / 2**30:.0f} GiB",
                delta_color="normal" if est["fits"] else "inverse")

    rows = state.estimate_rows(est)
    doc = {**est, "stage_memory": result["stage_memory"]}
    t1, t2 = st.columns([2, 3])
    with t1:
        st.dataframe(rows, hide_index=True, key="result",
                     column_config={"value": st.column_config.NumberColumn(format="%.6g")})
        state.downloads("estimate", doc, [{"key": k, "value": v} for k, v in state.flatten(doc)],
                        key="estimate_dl")
    with t2:
        st.plotly_chart(charts.breakdown_figure(est["breakdown_s"], est["step_time_s"]), key="breakdown")

    unit = st.radio("Memory unit", ["GiB", "GB"], horizontal=True, key=ps.key("mem_unit"))
    g1, g2 = st.columns([3, 2])
    with g1:
        st.plotly_chart(charts.memory_figure(result["stage_memory"], mem["hbm_bytes"], unit), key="memory")
    with g2:
        st.plotly_chart(charts.stage_time_figure(est["stage_times_s"]), key="stage_times")
    for note in est["notes"]:
        st.caption(f"note: {note}")


def show_des():
    st.subheader("Pipeline timeline (discrete-event simulation)")
    c = st.columns([1, 1, 4])
    c[0].button("Simulate with the DES", key="des_go", on_click=ps.set, args=("des", True))
    if ps.get("des"):
        c[1].button("Hide", key="des_hide", on_click=ps.set, args=("des", False))
    if not ps.get("des"):
        st.caption("Runs the simpy engine on the same op costs and draws every stage's schedule.")
        return
    try:
        with st.spinner("Simulating..."):
            doc = state.des_timeline(plan=ps.get("plan"), **inputs)
    except InputError as e:
        st.error(str(e))
        return
    est = doc["estimate"]
    st.caption(f"DES step time {est['step_time_s']:.4g} s · {doc['units']} simulated units · "
               f"{doc['events']:,} events")
    st.plotly_chart(charts.gantt_figure(doc["timeline"]), key="gantt")


def use_plan() -> None:  # button callback: runs before the next run draws the plan box
    st.session_state[ps.key("plan")] = st.session_state["search_pick"]


def show_search():
    st.subheader("Plan search")
    c = st.columns([3, 1, 1, 1])
    c[0].text_input("Fix plan keys (optional)", key=ps.key("fix"), placeholder="e.g. tp=8 or tp=4,pp=2",
                    help="keys held fixed during the search (clusterplan plan train --fix)")
    c[1].number_input("Top plans", min_value=1, max_value=50, step=1, key=ps.key("top"))
    c[2].button("Search plans", type="primary", key="search_go", on_click=ps.set, args=("search", True))
    if ps.get("search"):
        c[3].button("Hide", key="search_hide", on_click=ps.set, args=("search", False))
    if not ps.get("search"):
        st.caption("Searches every plan of this job on this cluster (planner.search) and ranks them.")
        return
    try:
        with st.spinner("Searching plans..."):
            doc = state.plan_search(fix=ps.get("fix"), top=ps.get("top"), **inputs)
    except InputError as e:
        st.error(str(e))
        return
    except Exception as e:  # noqa: BLE001 - a search bug must not hide the estimate above
        st.exception(e)
        return
    st.caption(f"{doc['candidates']:,} candidates, {doc.get('pruned', {}).get('scored', 0):,} scored "
               f"in {doc['search_time_s']:.2f} s")
    rows = state.search_rows(doc)
    st.dataframe(rows, hide_index=True, key="search_table",
                 column_config={"step_time_s": st.column_config.NumberColumn(format="%.4g"),
                                "tokens_per_s": st.column_config.NumberColumn(format="%.0f"),
                                "mfu_pct": st.column_config.NumberColumn(format="%.1f"),
                                "peak_GiB": st.column_config.NumberColumn(format="%.1f")})
    s1, s2 = st.columns([2, 3])
    with s1:
        st.selectbox("Plan", [r["plan"] for r in rows], key="search_pick",
                     format_func=lambda p: f"#{[r['plan'] for r in rows].index(p) + 1}: {p}")
        st.button("Simulate this plan", key="search_use", on_click=use_plan,
                  help="copies the plan into the Plan box above and estimates it")
        state.downloads("plan-search", doc, rows, key="search_dl")
    with s2:
        st.plotly_chart(charts.search_figure(doc["plans"]), key="search")


show_estimate()
show_des()
if SEARCH:
    show_search()
