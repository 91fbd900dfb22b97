"""Validate page: the simulator's predictions against published measurements."""
import streamlit as st

from ui import charts, state

st.title("Validate")
suites = list(state.VALIDATION_SUITES)
ps = state.PageState("validate")
k = ps.init("suite", suites[0], choices=suites)
st.radio("Suite", suites, key=k, horizontal=True, format_func=lambda s: state.VALIDATION_SUITES[s][0])
ps.sync_url()
suite = ps.get("suite")

with st.spinner("Running the suite..."):
    report = state.validation_report(suite)
if report.get("source"):
    st.caption(f"Source: {report['source']}. Validation only: no constant is fitted to these rows.")
m = st.columns(3)
m[0].metric("Cases", len(report["cases"]))
m[1].metric("MAPE", f"{report['mape_pct']:.1f}%")
m[2].metric("Max |error|", f"{report['max_error_pct']:.1f}%")

cols = ("name", "predicted", "measured", "unit", "error_pct", "plan")
rows = [{k: c.get(k) for k in cols if k in c} for c in report["cases"]]
st.dataframe(rows, hide_index=True, key="cases")
state.downloads(f"validate-{suite}", report, rows, key="validate_dl")
st.plotly_chart(charts.validation_figure(report), key="validation")
