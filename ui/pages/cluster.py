"""Cluster page: a preset or uploaded cluster, its tiers, its topology and collective bandwidth."""
import streamlit as st

from hwmodels.clusters import summary
from hwmodels.errors import InputError
from ui import charts, state

st.title("Cluster")
ps = state.PageState("cluster")
ref, spec, nodes = state.cluster_picker(ps, default="dgx-h100", default_nodes=2)
ps.stop_if_waiting()  # "custom (upload)" without a valid upload yet: the picker said what to do

try:
    cluster = state.get_cluster(ref, spec, nodes)
except InputError as e:
    ps.sync_url()
    st.error(str(e))
    st.stop()

# Group size for the collective curve: powers of two up to the cluster, plus one node and all.
n = cluster.num_devices
ranks_options = sorted({2 ** k for k in range(1, n.bit_length()) if 2 ** k <= n}
                       | {cluster.devices_per_node, n} - {1}) or [1]
kr = ps.init("ranks", n, int, choices=ranks_options)
ps.sync_url()

info = summary(cluster)
dev = cluster.device
if cluster.description:
    st.caption(cluster.description)
state.metric_row([("Devices", f"{n:,}"), ("Device", dev.name), ("Devices per node", str(cluster.devices_per_node)),
                  ("HBM per device", f"{dev.hbm_bytes / 2**30:.0f} GiB" if dev.hbm_bytes else "unknown"),
                  ("Dense BF16 peak", f"{dev.peak_flops['bf16'] / 1e12:.0f} TFLOP/s" if "bf16" in dev.peak_flops
                   else "n/a")])

left, right = st.columns([1, 1])
with left:
    st.plotly_chart(charts.topology_figure(info), key="topology")
with right:
    st.subheader("Network tiers")
    tiers = state.tier_rows(info)
    # st.table wraps long tier names (a data grid cuts them at its column width)
    st.table(state.tier_table(tiers), hide_index=True)
    st.caption("GB/s/dir: wire rate per device per direction; span: devices a group inside the tier "
               "can cover; the last tier spans all nodes.")
    state.downloads(f"{cluster.name}-{nodes}n-cluster", info, tiers, key="cluster_dl")

st.subheader("Collective bus bandwidth")
st.selectbox("Ranks in the group (contiguous)", ranks_options, key=kr,
             format_func=lambda r: f"{r} ranks" + (" (one node)" if r == cluster.devices_per_node else "")
             + (" (whole cluster)" if r == n else ""))
ranks = ps.get("ranks")
if ranks < 2:
    st.info("A single device has no collectives; add devices or nodes.")
else:
    rows = state.collective_curve(ref, spec, nodes, ranks)
    st.plotly_chart(charts.busbw_figure(rows, info["tiers"]), key="busbw")
    with st.expander("Table"):
        st.dataframe([{"op": r["op"], "size": charts.fmt_bytes(r["bytes"]), "bytes": r["bytes"],
                       "time_us": r["time_s"] * 1e6, "algbw_GB_s": r["algbw_bytes_per_s"] / 1e9,
                       "busbw_GB_s": r["busbw_bytes_per_s"] / 1e9} for r in rows], hide_index=True,
                     key="busbw_table")
    state.downloads(f"{cluster.name}-{nodes}n-{ranks}r-collectives", rows, rows, key="busbw_dl")
