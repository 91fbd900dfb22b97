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
    spread = all(c.get("measured_p10") is not None and c.get("measured_p90") is not None for c in cases) and cases
    fig.add_trace(go.Bar(x=names, y=[float(c["measured"]) for c in cases], name="measured",
                         marker_color="#7f7f7f",
                         error_y=dict(type="data", symmetric=False,  # the run's p10..p90 over its samples
                                      array=[float(c["measured_p90"]) - float(c["measured"]) for c in cases],
                                      arrayminus=[float(c["measured"]) - float(c["measured_p10"]) for c in cases])
                         if spread else None), row=1, col=1)
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


# ---- serving (plan serve / simulate serve) ---------------------------------------------------------

ROLE_COLOURS = {"both": PALETTE[0], "prefill": PALETTE[1], "decode": PALETTE[2]}


def pareto_figure(fleets: list[dict], percentile: str, selected: str | None = None) -> go.Figure:
    """Cost against the SLO-percentile TTFT (left) and TPOT (right) of every verified fleet; the
    cost-latency Pareto front joined by a line; the selected fleet ringed. Each point's customdata
    holds the fleet's label, so a click (plotly selection) names the fleet."""
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                        subplot_titles=(f"{percentile} TTFT vs cost", f"{percentile} TPOT vs cost"))
    for col, key in ((1, "ttft_s"), (2, "tpot_s")):
        for on_front, name, colour, symbol in ((False, "other fleets", "#9aa0a6", "circle"),
                                               (True, "Pareto front", PALETTE[0], "diamond")):
            pts = sorted((f for f in fleets if bool(f.get("on_front")) == on_front and f["predicted"][key] is not None),
                         key=lambda f: f["cost_per_hour"])
            if not pts:
                continue
            fig.add_trace(go.Scatter(
                x=[f["cost_per_hour"] for f in pts], y=[f["predicted"][key] * 1e3 for f in pts],
                mode="lines+markers" if on_front else "markers", name=name, legendgroup=name,
                showlegend=col == 1, marker=dict(size=12, color=colour, symbol=symbol),
                line=dict(color=colour, dash="dot"), customdata=[[f["label"]] for f in pts],
                hovertemplate="%{customdata[0]}<br>$%{x:.2f}/h, %{y:.1f} ms<extra></extra>"), row=1, col=col)
        sel = [f for f in fleets if f["label"] == selected and f["predicted"][key] is not None]
        if sel:
            fig.add_trace(go.Scatter(
                x=[sel[0]["cost_per_hour"]], y=[sel[0]["predicted"][key] * 1e3], mode="markers", name="selected",
                showlegend=col == 1, marker=dict(size=22, color="rgba(0,0,0,0)", line=dict(width=3, color="#d62728")),
                customdata=[[sel[0]["label"]]], hoverinfo="skip"), row=1, col=col)
        fig.update_yaxes(title_text=f"{percentile} {'TTFT' if key == 'ttft_s' else 'TPOT'} (ms)", row=1, col=col)
        fig.update_xaxes(title_text="USD per hour", row=1, col=col)
    return _layout(fig, "Cost vs latency of the verified fleets (click a point to select its fleet)", height=420)


def _ecdf(values: list[float]) -> tuple[list, list]:
    v = sorted(values)
    n = len(v)
    return [x * 1e3 for x in v], [(i + 1) / n for i in range(n)]


def latency_cdf_figure(ttft_s: list[float], tpot_s: list[float], slo_ttft_s: float | None = None,
                       slo_tpot_s: float | None = None, percentile: int | None = None) -> go.Figure:
    """Empirical CDFs of the measured requests' TTFT and TPOT, with the SLOs as vertical lines
    and the SLO percentile as a horizontal one."""
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1, subplot_titles=("TTFT", "TPOT"))
    for col, (vals, slo, name) in enumerate(((ttft_s, slo_ttft_s, "TTFT"), (tpot_s, slo_tpot_s, "TPOT")), 1):
        x, y = _ecdf(vals)
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", line_shape="hv", name=name,
                                 line=dict(color=PALETTE[col - 1]),
                                 hovertemplate=f"{name} %{{x:.1f}} ms: %{{y:.3f}}<extra></extra>"), row=1, col=col)
        if slo is not None and slo == slo and slo != float("inf"):  # a trace, not a shape: log axes
            fig.add_trace(go.Scatter(x=[slo * 1e3, slo * 1e3], y=[0, 1], mode="lines", name=f"{name} SLO",
                                     line=dict(color="#d62728", dash="dash"),
                                     hovertemplate=f"{name} SLO {slo * 1e3:g} ms<extra></extra>"), row=1, col=col)
        if percentile and x:
            lo, hi = min(x + ([slo * 1e3] if slo and slo != float("inf") else [])), \
                max(x + ([slo * 1e3] if slo and slo != float("inf") else []))
            fig.add_trace(go.Scatter(x=[lo, hi], y=[percentile / 100] * 2, mode="lines", name=f"p{percentile}",
                                     line=dict(color="#999", dash="dot"), showlegend=col == 1,
                                     hoverinfo="skip"), row=1, col=col)
        fig.update_xaxes(title_text=f"{name} (ms)", type="log" if x and min(x) > 0 else "linear", row=1, col=col)
    fig.update_yaxes(title_text="share of requests", range=[0, 1.02], row=1, col=1)
    return _layout(fig, "Latency CDFs of the simulated requests", height=380)


def replica_timeline_figure(replicas: list[dict]) -> go.Figure:
    """Per replica over simulated time: KV-cache utilisation after each iteration (top) and the
    requests waiting for their first token (bottom)."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("KV-cache utilisation", "requests waiting for their first token"))
    for r in replicas:
        name = f"replica {r['index']} ({r['role']}, {r['device']} tp={r['tp']})"
        colour = PALETTE[r["index"] % len(PALETTE)]
        fig.add_trace(go.Scatter(x=r["kv_time_s"], y=[100 * u for u in r["kv_utilization"]], mode="lines",
                                 line_shape="hv", name=name, legendgroup=name, line=dict(color=colour),
                                 hovertemplate="%{x:.2f} s: %{y:.1f}%<extra>" + name + "</extra>"), row=1, col=1)
        fig.add_trace(go.Scatter(x=r["queue_time_s"], y=r["waiting"], mode="lines", line_shape="hv", name=name,
                                 legendgroup=name, showlegend=False, line=dict(color=colour),
                                 hovertemplate="%{x:.2f} s: %{y} waiting<extra>" + name + "</extra>"), row=2, col=1)
    fig.update_yaxes(title_text="% of KV blocks", range=[0, 105], row=1, col=1)
    fig.update_yaxes(title_text="requests", rangemode="tozero", row=2, col=1)
    fig.update_xaxes(title_text="simulated time (s)", row=2, col=1)
    return _layout(fig, "Per-replica KV cache and queue over time", height=520)


def serving_gantt_figure(trace: dict, max_bars: int = 4000) -> go.Figure:
    """The serving Chrome trace (one "X" event per batch, pid = replica) as horizontal bars per
    replica: mixed batches with prompt tokens in one colour, decode-only runs in another. Only the
    first `max_bars` batches in time are drawn (the title says when)."""
    events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X"]
    names = {e["pid"]: e["args"]["name"] for e in trace.get("traceEvents", []) if e.get("ph") == "M"}
    events.sort(key=lambda e: e["ts"])
    shown = events[:max_bars]
    fig = go.Figure()
    for kind, colour in (("batch", PALETTE[1]), ("decode", PALETTE[0])):
        es = [e for e in shown if e["name"] == kind]
        if not es:
            continue
        fig.add_trace(go.Bar(
            y=[names.get(e["pid"], f"replica {e['pid']}") for e in es], x=[max(e["dur"] / 1e3, 1e-6) for e in es],
            base=[e["ts"] / 1e3 for e in es], orientation="h", marker_color=colour,
            name="prefill (+decode) batch" if kind == "batch" else "decode iterations",
            customdata=[[e["args"].get("prefill_tokens", 0), e["args"].get("decode", 0), e["args"].get("iterations", 1)]
                        for e in es],
            hovertemplate="start %{base:.2f} ms, %{x:.2f} ms<br>prompt tokens %{customdata[0]}, decodes "
                          "%{customdata[1]}, iterations %{customdata[2]}<extra></extra>"))
    order = sorted({names.get(e["pid"], f"replica {e['pid']}") for e in shown}, key=lambda s: int(s.split()[1]))
    fig.update_yaxes(categoryorder="array", categoryarray=order[::-1])
    fig.update_xaxes(title="simulated time (ms)")
    fig.update_layout(barmode="overlay")
    title = "Batches per replica (serving Chrome trace)"
    if len(events) > len(shown):
        title += f": first {len(shown):,} of {len(events):,} batches"
    return _layout(fig, title, height=max(260, 40 * len(order) + 140))


def capacity_figure(rows: list[dict]) -> go.Figure:
    """Sustainable requests/s per replica of every measured configuration (state.capacity_rows),
    coloured by role."""
    fig = go.Figure()
    for role in ("both", "prefill", "decode"):
        rs = [r for r in rows if r["role"] == role]
        if rs:
            fig.add_trace(go.Bar(x=[r["config"] for r in rs], y=[r["req/s per replica"] for r in rs],
                                 name={"both": "aggregated", "prefill": "prefill pool", "decode": "decode pool"}[role],
                                 marker_color=ROLE_COLOURS[role],
                                 hovertemplate="%{x}: %{y:.2f} req/s per replica<extra></extra>"))
    fig.update_yaxes(title="requests/s per replica within the SLOs")
    fig.update_xaxes(tickangle=-30, type="category")
    return _layout(fig, "Capacity per replica configuration", height=400)


def plan_pareto_figure(rows: list[dict], unit: str = "GiB", selected: str | None = None) -> go.Figure:
    """The searched plans (state.search_rows) as step time against peak memory per device, coloured
    by cost per step; plans on the Pareto front of the three as diamonds, the selected plan ringed.
    customdata[0] is the plan string, so a click (plotly selection) names the plan."""
    fig = go.Figure()
    costs = [r["cost_per_step_usd"] for r in rows if r["cost_per_step_usd"] is not None]
    for front, name, symbol in ((False, "other plans", "circle"), (True, "Pareto front", "diamond")):
        rs = [r for r in rows if r["pareto"] == front]
        if not rs:
            continue
        marker = dict(size=13, symbol=symbol, line=dict(width=1, color="#333"))
        if costs:
            marker.update(color=[r["cost_per_step_usd"] or 0.0 for r in rs], colorscale="Viridis",
                          cmin=min(costs), cmax=max(costs), showscale=front or not any(r["pareto"] for r in rows),
                          colorbar=dict(title="USD/step"))
        fig.add_trace(go.Scatter(
            x=[r["step_time_s"] * 1e3 for r in rs], y=[r[f"peak_{unit}"] for r in rs], mode="markers", name=name,
            marker=marker, customdata=[[r["plan"], r["rank"], r["cost_per_step_usd"] or 0.0] for r in rs],
            hovertemplate="#%{customdata[1]} %{customdata[0]}<br>%{x:.1f} ms/step, %{y:.1f} " + unit
                          + ", $%{customdata[2]:.4f}/step<extra></extra>"))
    sel = [r for r in rows if r["plan"] == selected]
    if sel:
        fig.add_trace(go.Scatter(x=[sel[0]["step_time_s"] * 1e3], y=[sel[0][f"peak_{unit}"]], mode="markers",
                                 name="selected", customdata=[[sel[0]["plan"], sel[0]["rank"], 0.0]],
                                 marker=dict(size=24, color="rgba(0,0,0,0)", line=dict(width=3, color="#d62728")),
                                 hoverinfo="skip"))
    fig.update_xaxes(title="step time (ms)")
    fig.update_yaxes(title=f"peak memory per device ({unit})")
    fig.update_layout(legend=dict(orientation="h", y=-0.2))
    return _layout(fig, "Searched plans: step time vs memory vs cost (click a point to pick the plan)", height=420)


def validation_groups_figure(groups: list[dict], title: str = "Error by group") -> go.Figure:
    """Per group of validation cases (state.validation_groups): the median signed error with error
    bars from the 10th to the 90th percentile, and the MAPE as a marker."""
    names = [g["group"] for g in groups]
    med = [g["median_error_pct"] for g in groups]
    fig = go.Figure()
    fig.add_trace(go.Bar(
        x=names, y=med, name="median error % (bars: p10..p90)", marker_color=PALETTE[0],
        error_y=dict(type="data", symmetric=False, array=[g["p90_error_pct"] - m for g, m in zip(groups, med)],
                     arrayminus=[m - g["p10_error_pct"] for g, m in zip(groups, med)], color="#444"),
        customdata=[[g["cases"], g["p10_error_pct"], g["p90_error_pct"]] for g in groups],
        hovertemplate="%{x}: median %{y:+.1f}% (p10 %{customdata[1]:+.1f}%, p90 %{customdata[2]:+.1f}%), "
                      "%{customdata[0]} cases<extra></extra>"))
    fig.add_trace(go.Scatter(x=names, y=[g["mape_pct"] for g in groups], mode="markers", name="MAPE %",
                             marker=dict(symbol="diamond", size=10, color="#d62728")))
    fig.add_hline(y=0, line_color="#999")
    fig.update_yaxes(title="error % (predicted vs measured)")
    fig.update_xaxes(tickangle=-35, type="category")
    return _layout(fig, title, height=460)
