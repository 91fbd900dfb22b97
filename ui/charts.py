"""Plotly figures for the dashboard: plain functions from result dicts to `go.Figure`.

They take what the library already returns (`hwmodels.clusters.summary`, rows of collective
timings, `StepEstimate.to_dict()`, `simulator.memory.stage_memory`, validation reports in the
docs/design.md §4 schema) and import no Streamlit, so tests build and inspect them directly. Numbers go
into figures as plain Python lists (not numpy arrays) so the figure JSON holds readable values.
"""
from __future__ import annotations

import networkx as nx
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

PALETTE = qualitative.Plotly
GIB = 2 ** 30

MEMORY_PARTS = (("weights_bytes", "weights"), ("gradients_bytes", "gradients"),
                ("optimizer_bytes", "optimizer states"), ("activations_bytes", "activations"),
                ("comm_buffers_bytes", "comm buffers"), ("reserve_bytes", "reserve / fragmentation"))
BREAKDOWN_LABELS = {"compute": "compute", "tp_comm": "TP comm (exposed)", "cp_comm": "CP comm (exposed)",
                    "ep_comm": "EP comm (exposed)", "pp_bubble": "pipeline bubble",
                    "pp_comm": "pipeline send/recv", "dp_comm": "DP/ZeRO comm (exposed)",
                    "optimizer": "optimizer step"}


def fmt_bytes(n: float) -> str:
    """1024-based size: 1 KiB, 256 MiB, 4 GiB."""
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= scale:
            v = n / scale
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.3g} {unit}"
    return f"{n:.0f} B"


def _layout(fig: go.Figure, title: str, height: int = 420) -> go.Figure:
    fig.update_layout(title=title, height=height, margin=dict(l=60, r=20, t=60, b=50))
    return fig


# ---- cluster topology ------------------------------------------------------------------------------

def tier_tree(cluster: dict, max_nodes: int = 4, max_children: int = 8) -> nx.DiGraph:
    """The cluster's tiers as a tree: fabric (last tier) -> nodes -> intra-node domains -> devices.

    A node is the domain of its outermost intra-node tier; each edge carries the index of the tier
    its link belongs to. Levels wider than `max_nodes`/`max_children` show their first members and
    one "+N more" vertex, so a 1024-device cluster stays legible.
    """
    tiers = cluster["tiers"]
    k = len(tiers) - 1  # index of the inter-node tier
    g = nx.DiGraph()
    root = "fabric"
    top = tiers[k]
    g.add_node(root, label=f"{top['name']} ({top['kind']})", role="fabric", level=0,
               hover=f"{top['name']} · {top['kind']} · {cluster['nodes']} nodes")

    def add_more(parent, count, what, level, tier):
        v = f"{parent}/more"
        g.add_node(v, label=f"+{count} {what}", role="more", level=level, hover=f"{count} more {what}")
        g.add_edge(parent, v, tier=tier)

    def add_domain(parent, path, tier_i, level):
        """Children of a tier-`tier_i` domain: domains of tier_i - 1, or devices at tier 0."""
        size = tiers[tier_i]["size"]
        shown = size if size <= max_children else max_children - 1
        for j in range(shown):
            v = f"{path}.{j}"
            if tier_i == 0:
                g.add_node(v, label="", role="device", level=level,
                           hover=f"{cluster['device']} {v.split('/', 1)[1]}")
            else:
                g.add_node(v, label=f"{tiers[tier_i - 1]['name']} {j}", role="domain", level=level,
                           hover=f"{tiers[tier_i - 1]['name']} domain ({tiers[tier_i - 1]['kind']})")
            g.add_edge(parent, v, tier=tier_i)
            if tier_i > 0:
                add_domain(v, v, tier_i - 1, level + 1)
        if shown < size:
            add_more(parent, size - shown, "devices" if tier_i == 0 else f"{tiers[tier_i - 1]['name']}s",
                     level, tier_i)

    n = cluster["nodes"]
    shown = n if n <= max_nodes else max_nodes - 1
    for i in range(shown):
        v = f"node/{i}"
        g.add_node(v, label=f"node {i}", role="node", level=1,
                   hover=f"node {i}: {cluster['devices_per_node']}× {cluster['device']}")
        g.add_edge(root, v, tier=k)
        add_domain(v, v, k - 1, 2)
    if shown < n:
        add_more(root, n - shown, "nodes", 1, k)
    return g


def tree_positions(g: nx.DiGraph, root) -> dict:
    """Tidy tree layout: leaves evenly spaced in depth-first order, parents centred over children,
    one row per level (top to bottom)."""
    pos, x = {}, [0.0]

    def place(v, depth):
        kids = list(g.successors(v))
        if not kids:
            pos[v] = (x[0], -depth)
            x[0] += 1.0
        else:
            for c in kids:
                place(c, depth + 1)
            pos[v] = (sum(pos[c][0] for c in kids) / len(kids), -depth)
    place(root, 0)
    return pos


def topology_figure(cluster: dict, graph: nx.Graph | None = None, max_nodes: int = 4,
                    max_children: int = 8) -> go.Figure:
    """The cluster's network. `cluster` is `hwmodels.clusters.summary(...)`. With `graph` (a
    networkx topology of devices, NICs and switches) it draws that graph with a spring layout;
    otherwise the tier tree of `tier_tree`, edges coloured by tier with its bandwidth in the legend."""
    tiers = cluster["tiers"]
    if graph is not None:
        g, pos = graph, nx.spring_layout(graph, seed=0)
    else:
        g = tier_tree(cluster, max_nodes, max_children)
        pos = tree_positions(g, "fabric")
    fig = go.Figure()
    for i, t in enumerate(tiers):
        xs, ys = [], []
        for a, b, d in g.edges(data=True):
            if d.get("tier", 0) == i:
                xs += [pos[a][0], pos[b][0], None]
                ys += [pos[a][1], pos[b][1], None]
        if xs:
            fig.add_trace(go.Scatter(
                x=xs, y=ys, mode="lines", line=dict(width=2, color=PALETTE[i % len(PALETTE)]),
                name=f"tier {i}: {t['name']} ({t['kind']}) {t['bytes_per_s'] / 1e9:g} GB/s/dir",
                hoverinfo="skip"))
    styles = {"fabric": ("square", 18, "#444"), "node": ("square", 16, "#636efa"),
              "domain": ("diamond", 12, "#00cc96"), "device": ("circle", 9, "#ef553b"),
              "more": ("circle-open", 10, "#888")}
    for role, (symbol, size, color) in styles.items():
        vs = [v for v, d in g.nodes(data=True) if d.get("role", "device") == role]
        if not vs:
            continue
        fig.add_trace(go.Scatter(
            x=[pos[v][0] for v in vs], y=[pos[v][1] for v in vs],
            mode="markers+text" if role in ("fabric", "node", "more") else "markers",
            text=[g.nodes[v].get("label", "") for v in vs],
            textposition={"fabric": "top center", "node": "middle left"}.get(role, "bottom center"),
            hovertext=[g.nodes[v].get("hover", str(v)) for v in vs], hoverinfo="text",
            marker=dict(symbol=symbol, size=size, color=color), name=role, showlegend=False))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    title = (f"{cluster['name']}: {cluster['nodes']} nodes × {cluster['devices_per_node']} "
             f"{cluster['device']} = {cluster['num_devices']} devices")
    _layout(fig, title, height=480)
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.02, x=0), margin=dict(l=20, r=20))
    return fig


# ---- collectives -------------------------------------------------------------------------------------

def busbw_figure(rows: list[dict], tiers: list[dict] | None = None) -> go.Figure:
    """Bus bandwidth (nccl-tests definition) against message size, one line per collective;
    dotted lines mark each tier's wire rate per device per direction."""
    fig = go.Figure()
    ops = list(dict.fromkeys(r["op"] for r in rows))
    for i, op in enumerate(ops):
        rs = [r for r in rows if r["op"] == op]
        fig.add_trace(go.Scatter(
            x=[float(r["bytes"]) for r in rs], y=[r["busbw_bytes_per_s"] / 1e9 for r in rs],
            mode="lines+markers", name=f"{op} ({rs[0]['ranks']} ranks)",
            line=dict(color=PALETTE[i % len(PALETTE)]),
            customdata=[[fmt_bytes(r["bytes"]), r["time_s"] * 1e6] for r in rs],
            hovertemplate="%{customdata[0]}: busbw %{y:.1f} GB/s, %{customdata[1]:.1f} µs<extra></extra>"))
    for i, t in enumerate(tiers or []):
        fig.add_hline(y=t["bytes_per_s"] / 1e9, line_dash="dot", line_color="#999",
                      annotation_text=f"{t['name']} wire {t['bytes_per_s'] / 1e9:g} GB/s",
                      annotation_position="top left")
    sizes = sorted({float(r["bytes"]) for r in rows})
    ticks = [s for s in sizes if s in (2.0 ** 10, 2.0 ** 15, 2.0 ** 20, 2.0 ** 25, 2.0 ** 30, 2.0 ** 32)]
    fig.update_xaxes(type="log", title="message size", tickvals=ticks, ticktext=[fmt_bytes(s) for s in ticks])
    fig.update_yaxes(title="bus bandwidth (GB/s)", rangemode="tozero")
    return _layout(fig, "Collective bus bandwidth vs message size (α-β model)")


# ---- training estimate ---------------------------------------------------------------------------------

def memory_figure(stage_memory: list[dict], hbm_bytes: float | None = None, unit: str = "GiB") -> go.Figure:
    """Per-device memory of every pipeline stage, stacked by part, with the device's capacity."""
    scale = GIB if unit == "GiB" else 1e9
    stages = [f"stage {i}" for i in range(len(stage_memory))]
    fig = go.Figure()
    for i, (key, label) in enumerate(MEMORY_PARTS):
        fig.add_trace(go.Bar(x=stages, y=[m[key] / scale for m in stage_memory], name=label,
                             marker_color=PALETTE[i % len(PALETTE)],
                             hovertemplate=f"{label}: %{{y:.2f}} {unit}<extra>%{{x}}</extra>"))
    if hbm_bytes:
        fig.add_hline(y=hbm_bytes / scale, line_dash="dash", line_color="#d62728",
                      annotation_text=f"device memory {hbm_bytes / scale:.1f} {unit}",
                      annotation_position="top left")
    fig.update_layout(barmode="stack")
    fig.update_yaxes(title=f"per-device memory ({unit})")
    return _layout(fig, "Memory per device by pipeline stage")


def breakdown_figure(breakdown_s: dict, step_time_s: float | None = None) -> go.Figure:
    """Where the step time goes, in milliseconds (terms sum to the step time)."""
    step = step_time_s or sum(breakdown_s.values()) or 1.0
    keys = list(breakdown_s)
    labels = [BREAKDOWN_LABELS.get(k, k) for k in keys]
    ms = [breakdown_s[k] * 1e3 for k in keys]
    fig = go.Figure(go.Bar(
        x=ms, y=labels, orientation="h", marker_color=[PALETTE[i % len(PALETTE)] for i in range(len(keys))],
        text=[f"{v:.1f} ms ({100 * breakdown_s[k] / step:.1f}%)" for v, k in zip(ms, keys)],
        textposition="auto", hovertemplate="%{y}: %{x:.3f} ms<extra></extra>", name="time"))
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(title="milliseconds per step")
    return _layout(fig, f"Step time breakdown ({step * 1e3:.1f} ms per step)")


def stage_time_figure(stage_times_s: list[float]) -> go.Figure:
    """Time of one micro-batch (forward + backward + exposed TP/CP/EP communication) per stage."""
    fig = go.Figure(go.Bar(x=[f"stage {i}" for i in range(len(stage_times_s))],
                           y=[t * 1e3 for t in stage_times_s], marker_color=PALETTE[0], name="stage"))
    fig.update_yaxes(title="ms per micro-batch")
    return _layout(fig, "Per-stage time of one micro-batch", height=320)


def search_figure(plans: list[dict]) -> go.Figure:
    """Tokens/s of the ranked plans of a search (planner.search), best first, MFU in the hover."""
    labels = [f"#{p.get('rank', i + 1)}" for i, p in enumerate(plans)]
    fig = go.Figure(go.Bar(
        x=labels, y=[p["tokens_per_s"] for p in plans], marker_color=PALETTE[2], name="tokens/s",
        customdata=[[p["plan_string"], 100 * p["mfu"], p["step_time_s"] * 1e3] for p in plans],
        hovertemplate="%{customdata[0]}<br>%{y:,.0f} tokens/s, MFU %{customdata[1]:.1f}%, "
                      "%{customdata[2]:.1f} ms/step<extra>%{x}</extra>"))
    fig.update_yaxes(title="tokens per second")
    fig.update_xaxes(type="category", title="rank")
    return _layout(fig, "Best plans found by the search", height=340)


# ---- validation ------------------------------------------------------------------------------------------

def validation_figure(report: dict) -> go.Figure:
    """Predicted vs measured per case (top) and the signed error per case with ±MAPE (bottom)."""
    cases = report["cases"]
    names = [c["name"] for c in cases]
    unit = cases[0].get("unit", "") if cases else ""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.62, 0.38], vertical_spacing=0.06)
    fig.add_trace(go.Bar(x=names, y=[float(c["measured"]) for c in cases], name="measured",
                         marker_color="#7f7f7f"), row=1, col=1)
    fig.add_trace(go.Bar(x=names, y=[float(c["predicted"]) for c in cases], name="predicted",
                         marker_color=PALETTE[0]), row=1, col=1)
    errs = [float(c["error_pct"]) for c in cases]
    fig.add_trace(go.Bar(x=names, y=errs, name="error %", showlegend=False,
                         marker_color=["#d62728" if e > 0 else "#1f77b4" for e in errs],
                         text=[f"{e:+.1f}%" for e in errs], textposition="outside"), row=2, col=1)
    mape = report.get("mape_pct")
    if mape is not None:
        for y in (mape, -mape):
            fig.add_hline(y=y, line_dash="dot", line_color="#999", row=2, col=1)
    fig.update_layout(barmode="group")
    fig.update_yaxes(title=unit, row=1, col=1)
    lo, hi = min(errs + [-(mape or 0), 0.0]), max(errs + [mape or 0, 0.0])
    pad = 0.25 * (hi - lo or 1.0)
    fig.update_yaxes(title="error %", row=2, col=1, zeroline=True, range=[lo - pad, hi + pad])
    fig.update_xaxes(tickangle=-30, row=2, col=1)
    return _layout(fig, f"Predicted vs measured (MAPE {mape:.1f}%)" if mape is not None else
                   "Predicted vs measured", height=620)


def gantt_figure(timeline: list, max_units: int = 16) -> go.Figure:
    """Pipeline timeline from the DES (`DESResult.timeline`: (unit, stream, name, start_s, dur_s,
    args)) as horizontal bars with numeric start and duration: one row per unit and stream.
    (`px.timeline` would turn numeric times into dates, so bars are drawn with go.Bar.)"""
    units = sorted({u for u, *_ in timeline})[:max_units]
    keep = set(units)
    colours = {"F": qualitative.Plotly[0], "B": qualitative.Plotly[1], "W": qualitative.Plotly[2],
               "o": qualitative.Plotly[3], "d": qualitative.Plotly[4], "r": qualitative.Plotly[4],
               "g": qualitative.Plotly[4]}
    rows, bases, widths, colors, texts = [], [], [], [], []
    for unit, stream, name, start, dur, _args in timeline:
        if unit not in keep:
            continue
        rows.append(f"stage {unit[1]} dp {unit[0]} · {stream}")
        bases.append(start * 1e3)
        widths.append(max(dur * 1e3, 1e-6))
        colors.append(colours.get(name[:1], qualitative.Plotly[5]))
        texts.append(name)
    fig = go.Figure(go.Bar(y=rows, x=widths, base=bases, orientation="h", marker_color=colors,
                           hovertext=texts, hovertemplate="%{hovertext}<br>start %{base:.2f} ms"
                           "<br>%{x:.2f} ms<extra></extra>"))
    order = sorted(set(rows), key=lambda r: (int(r.split()[1]), int(r.split()[3]), r))
    fig.update_yaxes(categoryorder="array", categoryarray=order[::-1])
    fig.update_xaxes(title="time (ms)")
    return _layout(fig, "pipeline timeline (DES): F forward, B backward, W weight gradient",
                   height=max(300, 28 * len(order) + 120))
