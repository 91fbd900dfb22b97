"""Train page: one training plan through the analytic engine (simulator.analytic.estimate)."""
import streamlit as st

from hwmodels.errors import InputError
from simulator.training import DTYPES
from ui import charts, state

st.title("Train")
st.caption("Predict one training step of a plan: time, throughput, MFU and per-device memory.")
ps = state.PageState("train")

c1, c2 = st.columns([1, 1])
with c1:
    model_ref, model_cfg = state.model_picker(ps, default="llama3-8b")
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
                     "fsdp (and with recompute=full: recompute_layers, recompute_method); dp is derived when "
                     "omitted (e.g. tp=8,pp=4,vpp=2,mb=1,recompute=selective,sp=on)")
NO_SOFTWARE = "(none)"


def take_software() -> None:  # callback: a profile fills the options below; the user may still change them
    name = st.session_state[ps.key("software")]
    if name == NO_SOFTWARE:
        return
    for key, value in state.software_options(name).items():
        st.session_state[ps.key(key)] = value


with st.expander("Framework options"):
    profiles = [NO_SOFTWARE, *state.software_names()]
    st.selectbox("Software profile", profiles, key=ps.init("software", NO_SOFTWARE, choices=profiles),
                 on_change=take_software,
                 help="the settings of a training framework as it ran (clusterplan --software): fills the "
                      "options below, and its fixed plan keys (FSDP: zero=3) apply where the plan leaves them out")
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
    kernels = state.attention_kernels()
    o[2].radio("Flash kernel", kernels, horizontal=True, key=ps.init("attention_kernel", kernels[0], choices=kernels),
               help="FlashAttention-2 class, FA1, or the Triton port (clusterplan --attention-kernel)")

    o = st.columns(3)
    o[0].number_input("LoRA rank (0: every weight trains)", min_value=0, step=8, key=ps.init("lora_rank", 0, int, lo=0),
                      help="fine-tune with rank-r adapters, base weights frozen (clusterplan --lora-rank)")
    o[1].text_input("LoRA targets", key=ps.init("lora_targets", "qkv,proj,fc1,fc2"),
                    help="linears the adapters sit on: qkv, proj, fc1, fc2 (clusterplan --lora-targets)")

inputs = dict(model_ref=model_ref, model_cfg=model_cfg, cluster_ref=cluster_ref, cluster_spec=cluster_spec,
              nodes=nodes, seq_len=ps.get("seq"), global_batch=ps.get("batch"),
              dtype=ps.get("dtype"), attention=ps.get("attention"), grad_overlap=ps.get("grad_overlap"),
              tp_overlap=ps.get("tp_overlap"), p2p_overlap=ps.get("p2p_overlap"), dropout=ps.get("dropout"),
              attention_kernel=ps.get("attention_kernel"),
              software=None if ps.get("software") == NO_SOFTWARE else ps.get("software"),
              lora_rank=ps.get("lora_rank"), lora_targets=ps.get("lora_targets"))
SEARCH = state.search_available()
if SEARCH:
    ps.init("search", False, bool)
    ps.init("fix", "")
    ps.init("top", 5, int, lo=1, hi=50)
ps.init("mem_unit", "GiB", choices=["GiB", "GB"])
ps.init("des", False, bool)
ps.init("pick", "")  # the search plan picked in the list or on the Pareto chart
ps.stop_if_waiting()  # a custom model or cluster without a valid upload: nothing to compute yet
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
    unit = ps.get("mem_unit")
    scale = state.MEM_UNITS[unit]
    st.markdown(f"**{est['model']}** on **{est['cluster']}** ({est['num_devices']} devices) · plan "
                f"`{est['plan_string']}` · {est['micro_batches']} micro-batches per step")
    step = est["step_time_s"]
    hbm = mem["hbm_bytes"]
    state.metric_row([
        ("Step time", f"{step:,.2f} s" if step >= 10 else f"{step * 1e3:,.1f} ms"),
        ("Tokens/s", f"{est['tokens_per_s']:,.0f}"),
        ("TFLOP/s per device", f"{est['tflops_per_device']:.1f}"),
        ("MFU", f"{100 * est['mfu']:.1f}%"),
        ("Peak memory", f"{mem['peak_bytes'] / scale:.1f} {unit}",
         f"{'fits' if est['fits'] else 'does NOT fit'} in {hbm / scale:.0f} {unit}" if hbm else
         ("fits" if est["fits"] else "does NOT fit"), "normal" if est["fits"] else "inverse")])

    st.radio("Memory unit", list(state.MEM_UNITS), horizontal=True, key=ps.key("mem_unit"),
             help="GiB = 2^30 bytes, GB = 10^9 bytes; applies to the metric, the table and the chart")
    rows = state.estimate_rows(est, unit)
    doc = {**est, "stage_memory": result["stage_memory"]}
    t1, t2 = st.columns([2, 3])
    with t1:
        st.dataframe(rows, hide_index=True, key="result",
                     column_config={"value": st.column_config.NumberColumn(format="%.6g")})
        state.downloads("estimate", doc, [{"key": k, "value": v} for k, v in state.flatten(doc)],
                        key="estimate_dl")
    with t2:
        st.plotly_chart(charts.breakdown_figure(est["breakdown_s"], est["step_time_s"]), key="breakdown")

    g1, g2 = st.columns([3, 2])
    with g1:
        st.plotly_chart(charts.memory_figure(result["stage_memory"], hbm, unit), key="memory")
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
    st.session_state[ps.key("plan")] = st.session_state[ps.key("pick")]


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
    unit = ps.get("mem_unit")
    rows = state.search_rows(doc, unit)
    st.dataframe(rows, hide_index=True, key="search_table",
                 column_config={"step_time_s": st.column_config.NumberColumn(format="%.4g"),
                                "tokens_per_s": st.column_config.NumberColumn(format="%.0f"),
                                "mfu_pct": st.column_config.NumberColumn(format="%.1f"),
                                f"peak_{unit}": st.column_config.NumberColumn(format="%.1f"),
                                "cost_per_step_usd": st.column_config.NumberColumn(format="%.4g")})
    plans = [r["plan"] for r in rows]
    if ps.get("pick") not in plans:
        ps.set("pick", plans[0])

    def pick_from_chart() -> None:  # plotly selection callback: runs before the selectbox is drawn
        plan = state.plan_from_selection(st.session_state.get("search_pareto"), plans)
        if plan is not None:
            st.session_state[ps.key("pick")] = plan

    st.plotly_chart(charts.plan_pareto_figure(rows, unit, ps.get("pick")), key="search_pareto",
                    on_select=pick_from_chart, selection_mode="points")
    s1, s2 = st.columns([2, 3])
    with s1:
        st.selectbox("Plan", plans, key=ps.key("pick"), format_func=lambda p: f"#{plans.index(p) + 1}: {p}")
        st.button("Simulate this plan", key="search_use", on_click=use_plan,
                  help="copies the plan into the Plan box above and estimates it")
        state.downloads("plan-search", doc, rows, key="search_dl")
    with s2:
        st.plotly_chart(charts.search_figure(doc["plans"]), key="search")


show_estimate()
show_des()
if SEARCH:
    show_search()
