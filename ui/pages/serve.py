"""Serve page: the cheapest serving fleet for a rate within SLOs (`clusterplan plan serve`,
planner.serve_search.plan_serving), the cost-latency front of the verified fleets, the DES check of a
selected fleet, and `simulate serve` of that fleet with the page's workload."""
import json

import streamlit as st

from hwmodels.devices import device_names
from hwmodels.errors import InputError
from simulator.regimes import fleet_trust_notes
from ui import charts, state

st.title("Serve")
st.caption("Size a serving fleet (device types × tensor parallelism × replicas) for a request rate "
           "within TTFT/TPOT SLOs, then simulate it.")
ps = state.PageState("serve")

c1, c2 = st.columns([1, 1])
with c1:
    model_ref, model_cfg = state.model_picker(ps, default="llama3-8b")
    e = st.columns(3)
    e[0].selectbox("Engine", state.SERVE_ENGINES, key=ps.init("engine", "vllm", choices=state.SERVE_ENGINES),
                   help="scheduler and memory semantics of the serving engine")
    e[1].selectbox("Precision", ["bf16", "fp16", "fp8"], key=ps.init("dtype", "bf16", choices=["bf16", "fp16", "fp8"]))
    e[2].selectbox("Disaggregation", state.DISAGG, key=ps.init("disagg", "off", choices=state.DISAGG),
                   help="prefill/decode pools: auto (the cheaper of both), on, off")
with c2:
    ps.init("devices", state.DEFAULT_POOL)
    base_key = "_serve.pool_base"
    if base_key not in st.session_state:  # the editor edits the pool the page opened with
        try:
            st.session_state[base_key] = state.pool_rows(ps.get("devices"))
        except InputError as err:
            st.error(f"device pool in the link: {err}")
            st.session_state[base_key] = state.pool_rows(state.DEFAULT_POOL)
    st.markdown("**Device pool** (count available, USD per device-hour; empty price: the catalog's)")
    edited = st.data_editor(
        st.session_state[base_key], num_rows="dynamic", hide_index=True, key="serve.pool_editor",
        column_config={"device": st.column_config.SelectboxColumn("device", options=device_names(), required=True),
                       "count": st.column_config.NumberColumn("count", min_value=1, step=1, required=True),
                       "price_per_hour": st.column_config.NumberColumn("$/device-hour", min_value=0.0, format="%.2f")})
    try:
        ps.set("devices", state.pool_text(edited if isinstance(edited, list) else edited.to_dict("records")))
    except InputError as err:
        st.error(str(err))
        ps.waiting.append("devices")

st.subheader("Workload and SLOs")
w = st.columns(5)
w[0].number_input("Rate to plan for (req/s)", min_value=0.01, max_value=1e6, step=1.0, format="%.2f",
                  key=ps.init("rate", 4.0, float, lo=0.01, hi=1e6))
w[1].text_input("Prompt length", key=ps.init("prompt_len", "512"),
                help="1024 | uniform:LO:HI | normal:MEAN:STD | lognormal:MEAN:STD | exp:MEAN (tokens)")
w[2].text_input("Output length", key=ps.init("output_len", "128"), help="same syntax as the prompt length")
w[3].number_input("Requests per probe", min_value=50, max_value=5000, step=50,
                  key=ps.init("requests", 200, int, lo=50, hi=5000))
w[4].number_input("Seed", min_value=0, max_value=2**31 - 1, step=1, key=ps.init("seed", 0, int, lo=0, hi=2**31 - 1))
s = st.columns(5)
s[0].number_input("TTFT SLO (ms)", min_value=1.0, max_value=600_000.0, step=100.0,
                  key=ps.init("slo_ttft_ms", 2000.0, float, lo=1.0, hi=600_000.0))
s[1].number_input("TPOT SLO (ms)", min_value=0.1, max_value=60_000.0, step=10.0,
                  key=ps.init("slo_tpot_ms", 100.0, float, lo=0.1, hi=60_000.0))
s[2].selectbox("SLO percentile", state.SLO_PERCENTILES, format_func=lambda p: f"p{p}",
               key=ps.init("percentile", 90, int, choices=state.SLO_PERCENTILES))
s[3].number_input("Size classes", min_value=1, max_value=4, step=1, key=ps.init("classes", 1, int, lo=1, hi=4),
                  help="split prompts into K size classes (Mélange); 1: no split")
ps.init("run", False, bool)
ps.init("fleet", "")
ps.init("sim", False, bool)
ps.init("load", "rate", choices=["rate", "concurrency", "trace"])
ps.init("sim_rate", "")
ps.init("concurrency", 16, int, lo=1, hi=100_000)
ps.init("sim_requests", 500, int, lo=1, hi=100_000)
s[4].button("Plan fleet", type="primary", key="serve_go", on_click=ps.set, args=("run", True))
ps.stop_if_waiting()
ps.sync_url()

inputs = dict(model_ref=model_ref, model_cfg=model_cfg, devices=ps.get("devices"), rate=float(ps.get("rate")),
              prompt_len=ps.get("prompt_len"), output_len=ps.get("output_len"),
              slo_ttft_s=ps.get("slo_ttft_ms") / 1e3, slo_tpot_s=ps.get("slo_tpot_ms") / 1e3,
              percentile=ps.get("percentile"), requests=ps.get("requests"), seed=ps.get("seed"),
              engine=ps.get("engine"), dtype=ps.get("dtype"), disagg=ps.get("disagg"), size_classes=ps.get("classes"))
if not ps.get("run"):
    st.info("Press **Plan fleet**: capacities of every device type × TP are measured with the serving DES, "
            "an ILP picks the cheapest fleet, and the fleet is checked end to end.")
    st.stop()

bar = st.progress(0.0, text="measuring capacities...")


def progress(done: int, total: int, label: str) -> None:  # planner.serve_search.capacities calls it
    bar.progress(done / total, text=f"capacity probes: {done}/{total} configurations ({label})")


try:
    doc = state.plan_serve(**inputs, _progress=state.live_progress(progress))
except InputError as err:
    bar.empty()
    st.error(str(err))
    st.stop()
bar.empty()

pk = f"p{doc['slo']['percentile']}"
best = doc["fleets"][0]
fleets = state.selectable_fleets(doc)
labels = [f["label"] for f in fleets]
if ps.get("fleet") not in labels:
    ps.set("fleet", labels[0])
ps.sync_url()


def ms(v):
    return "n/a" if v is None else f"{v * 1e3:,.1f} ms"


state.metric_row([("Cheapest fleet", f"${best['cost_per_hour']:,.2f}/h"), ("Devices", f"{best['num_devices']}"),
                  (f"{pk} TTFT", ms(best["predicted"]["ttft_s"])), (f"{pk} TPOT", ms(best["predicted"]["tpot_s"])),
                  ("SLO attainment", f"{100 * best['slo_attainment']:.1f}%"),
                  ("Search", f"{doc['search_time_s']:.1f} s")])
st.markdown(f"**{doc['model']}** at {doc['rate_req_per_s']:g} req/s · cheapest: `{state.fleet_label(best)}` "
            f"({best['mode']}) · solver {doc['solver']['status']}")
rows = state.fleet_rows(doc)
st.dataframe(rows, hide_index=True, key="fleets",
             column_config={"replicas": st.column_config.TextColumn(width="large"),
                            "$/h": st.column_config.NumberColumn(format="%.2f"),
                            f"{pk} TTFT ms": st.column_config.NumberColumn(format="%.1f"),
                            f"{pk} TPOT ms": st.column_config.NumberColumn(format="%.1f"),
                            "tok/s/device": st.column_config.NumberColumn(format="%.0f"),
                            "SLO attainment %": st.column_config.NumberColumn(format="%.1f"),
                            "headroom %": st.column_config.NumberColumn(format="%.1f")})
state.downloads("plan-serve", doc, rows, key="plan_dl")
for note in doc["notes"]:
    st.caption(f"note: {note}")
for note in fleet_trust_notes(doc["fleets"]):
    st.caption(f"trust: {note}")


def pick_from_chart() -> None:  # plotly selection callback: runs before the rerun draws the selectbox
    label = state.fleet_from_selection(st.session_state.get("pareto"), fleets)
    if label is not None:
        st.session_state[ps.key("fleet")] = label


st.plotly_chart(charts.pareto_figure(fleets, pk, ps.get("fleet")), key="pareto", on_select=pick_from_chart,
                selection_mode="points")
caps = state.capacity_rows(doc)
with st.expander("Capacity per configuration", expanded=False):
    st.plotly_chart(charts.capacity_figure(caps), key="capacities")
    st.dataframe(caps, hide_index=True, key="capacity_table")

st.subheader("Selected fleet")
by_label = {f["label"]: f for f in fleets}
st.selectbox("Fleet", labels, key=ps.key("fleet"),
             format_func=lambda lab: f"{'#' + str(by_label[lab]['rank']) if by_label[lab]['rank'] else 'front'}"
                                     f" · ${by_label[lab]['cost_per_hour']:.2f}/h · {lab}")
fleet = next(f for f in fleets if f["label"] == ps.get("fleet"))
if fleet.get("note"):
    st.caption(f"note: {fleet['note']}")
b = st.columns([1, 1, 4])
b[0].button("Simulate this fleet", key="sim_go", on_click=ps.set, args=("sim", True),
            help="clusterplan simulate serve of this fleet with the workload below")
if ps.get("sim"):
    b[1].button("Show the DES check", key="sim_hide", on_click=ps.set, args=("sim", False))

trace_text, trace_name = None, ""
if ps.get("sim"):
    lw = st.columns([2, 1, 1, 1])
    lw[0].radio("Load", ["rate", "concurrency", "trace"], horizontal=True, key=ps.key("load"),
                format_func={"rate": "open loop (rate)", "concurrency": "closed loop (concurrency)",
                             "trace": "trace upload"}.get)
    lw[1].text_input("Rate (req/s or RATE:SECONDS,...)", key=ps.key("sim_rate"),
                     placeholder=f"{doc['rate_req_per_s']:g}")
    lw[2].number_input("Concurrency", min_value=1, max_value=100_000, step=1, key=ps.key("concurrency"))
    lw[3].number_input("Requests", min_value=1, max_value=100_000, step=100, key=ps.key("sim_requests"))
    if ps.get("load") == "trace":
        up = state.file_uploader("Trace: Azure LLM CSV, BurstGPT CSV or Mooncake JSONL", ["csv", "jsonl", "json"],
                                 "serve.trace_file")
        if up is None:
            st.info("Upload a trace to replay (the formats `clusterplan simulate serve --trace` reads).")
            ps.sync_url()
            st.stop()
        try:
            trace_text, trace_name = state.read_upload(up, "trace file"), up.name
        except InputError as err:
            st.error(str(err))
            ps.sync_url()
            st.stop()
    ps.sync_url()

try:
    with st.spinner("Simulating the fleet..."):
        if ps.get("sim"):
            run = state.fleet_simulate(model_ref, model_cfg, state.fleet_key(fleet), inputs["engine"], inputs["dtype"],
                                       ps.get("load"), ps.get("sim_rate") or f"{doc['rate_req_per_s']:g}",
                                       ps.get("concurrency"), inputs["prompt_len"], inputs["output_len"],
                                       ps.get("sim_requests"), inputs["seed"], inputs["slo_ttft_s"],
                                       inputs["slo_tpot_s"], trace_text, trace_name)
        else:
            run = state.fleet_check(model_ref, model_cfg, state.fleet_key(fleet), inputs["rate"], inputs["prompt_len"],
                                    inputs["output_len"], inputs["slo_ttft_s"], inputs["slo_tpot_s"],
                                    inputs["requests"], inputs["seed"], inputs["engine"], inputs["dtype"])
except InputError as err:
    st.error(str(err))
    st.stop()

rep = run["report"]
wl = rep["workload"]
load = (f"{wl['rate']} req/s" if "rate" in wl else f"concurrency {wl['concurrency']}" if "concurrency" in wl
        else f"trace {wl.get('trace')}")
st.caption(("simulate serve" if ps.get("sim") else "DES check (as plan serve ran it)")
           + f": {load}, {rep['num_requests']:,} requests ({rep['measured']:,} measured, {rep['rejected']} rejected)")
p = pk
state.metric_row([(f"{p} TTFT", ms(rep["ttft_s"].get(p))), (f"{p} TPOT", ms(rep["tpot_s"].get(p))),
                  ("Throughput", f"{rep['throughput_requests_per_s']:,.2f} req/s"),
                  ("Output tokens/s", f"{rep['throughput_tokens_per_s']:,.0f}"),
                  ("SLO attainment", f"{100 * rep['slo_attainment']:.1f}%"),
                  ("KV utilisation (mean)", f"{100 * rep['kv_utilization']['mean']:.1f}%")])
st.plotly_chart(charts.latency_cdf_figure(run["ttft_s"], run["tpot_s"], inputs["slo_ttft_s"], inputs["slo_tpot_s"],
                                          inputs["percentile"]), key="cdf")
st.plotly_chart(charts.replica_timeline_figure(run["replicas"]), key="replica_timeline")
st.caption("Waiting: requests routed to the replica that have no first token yet (queued or in prefill); a "
           "disaggregated fleet counts them on the decode replica that produced their first token.")
st.plotly_chart(charts.serving_gantt_figure(run["chrome_trace"], state.MAX_GANTT_BARS), key="serve_gantt")
lat = [{"metric": k.removesuffix("_s").upper(), **{q: (rep[k].get(q) or float("nan")) * 1e3
                                                      for q in ("mean", "p50", "p90", "p99")}}
       for k in ("ttft_s", "tpot_s", "itl_s", "e2e_s", "queue_s")]
st.dataframe(lat, hide_index=True, key="latency_table",
             column_config={q: st.column_config.NumberColumn(f"{q} (ms)", format="%.1f")
                            for q in ("mean", "p50", "p90", "p99")})
name = "simulate-serve" if ps.get("sim") else "fleet-check"
dl = st.container(horizontal=True) if "horizontal" in state.inspect.signature(st.container).parameters else st
dl.download_button("Download JSON", state.to_json(rep), file_name=f"{name}.json", mime="application/json",
                   key="run_dl.json", on_click="ignore")
dl.download_button("Download CSV", state.to_csv(lat), file_name=f"{name}-latency.csv", mime="text/csv",
                   key="run_dl.csv", on_click="ignore")
dl.download_button("Download Chrome trace", json.dumps(run["chrome_trace"]), file_name=f"{name}-trace.json",
                   mime="application/json", key="run_dl.trace", on_click="ignore",
                   help="open in https://ui.perfetto.dev or chrome://tracing")
for note in rep["notes"]:
    st.caption(f"note: {note}")
