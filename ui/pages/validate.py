"""Validate page: the simulator's predictions against measurements (published training throughput,
collectives, serving replays, our own harness), per case and per group with error bars."""
import streamlit as st

from ui import charts, state

st.title("Validate")
suites = list(state.VALIDATION_SUITES)
ps = state.PageState("validate")
k = ps.init("suite", suites[0], choices=suites)
st.radio("Suite", suites, key=k, horizontal=True, format_func=lambda s: state.VALIDATION_SUITES[s][0])
suite = ps.get("suite")
if suite == "serving":
    kr = ps.init("rows", state.SERVING_ROWS, int, lo=0, hi=100_000)
    st.number_input("Serving rows to replay (0: all, slow)", min_value=0, max_value=100_000, step=50, key=kr,
                    help="the first rows in scope of aiconfigurator-core's silicon_sample.csv, each replayed "
                         "with its benchmark client (quick: 3 measured requests per slot)")
ps.sync_url()

with st.spinner("Running the suite..."):
    report = state.validation_report(suite, ps.get("rows") if suite == "serving" else None)
if report.get("source"):
    st.caption(f"Source: {report['source']}. Validation only: no constant is fitted to these rows.")
state.metric_row([("Cases", f"{len(report['cases']):,}"), ("MAPE", f"{report['mape_pct']:.1f}%"),
                  ("Max |error|", f"{report['max_error_pct']:.1f}%")])

groups = state.validation_groups(report, suite)
if len(groups) > 1 and len(groups) < len(report["cases"]):
    label = {"collectives": "system and collective", "serving": "engine, system and metric"}.get(suite, "kind")
    st.subheader(f"Summary by {label}")
    st.plotly_chart(charts.validation_groups_figure(groups, f"Error by {label}: median, p10..p90, MAPE"),
                    key="validation_groups")
    st.dataframe(groups, hide_index=True, key="groups",
                 column_config={c: st.column_config.NumberColumn(format="%.1f")
                                for c in ("mape_pct", "median_error_pct", "p10_error_pct", "p90_error_pct",
                                          "max_abs_error_pct")})
    state.downloads(f"validate-{suite}-groups", groups, groups, key="groups_dl")

st.subheader("Cases")
cols = ("name", "predicted", "measured", "measured_p10", "measured_p90", "unit", "error_pct", "plan")
rows = [{k: c.get(k) for k in cols if k in c} for c in report["cases"]]
st.dataframe(rows, hide_index=True, key="cases", column_config={"name": st.column_config.TextColumn(width="large")})
state.downloads(f"validate-{suite}", report, rows, key="validate_dl")
if len(report["cases"]) <= 60:  # one bar per case stays legible; larger suites are summarised above
    st.plotly_chart(charts.validation_figure(report), key="validation")
