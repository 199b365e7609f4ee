"""Figures for the dashboard: pure functions, data in, a ``plotly.graph_objects.Figure`` out, except
the task graph (:func:`graph_figure`), a Vega-Lite spec: it is the first view of every page open,
and in the browser plotly alone costs about 1.5 s of that on a 2-core machine while Streamlit's
built-in Vega-Lite costs about 0.4 s (``python bench/bench_dashboard.py --floors``).

Nothing here reads files or touches Streamlit, so every figure can be tested (and reused in a
notebook) on its own. Colours: modality fixes a node's fill, community its outline.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import networkx as nx
import numpy as np
# pandas before any figure: plotly's validators read pandas from sys.modules without the import lock
# (_plotly_utils.optional_imports.get_module(..., should_load=False)), and st.dataframe imports it lazily,
# e.g. in the live-runs fragment's thread while a full rerun builds a figure in another. That figure then
# met a half-imported pandas ("partially initialized module 'pandas' has no attribute 'Series'") and the
# tab stayed empty. Imported here, on the first script run before any second thread, the race cannot occur.
import pandas  # noqa: F401
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from pitune_core.predict.quality import best_predictor  # noqa: F401  (the one rule; re-exported for the app)
from pitune_core.study.robustness import MEASURE_LABELS

__all__ = [
    "MODALITY_COLORS",
    "COMMUNITY_COLORS",
    "community_color",
    "graph_positions",
    "graph_figure",
    "PICK",
    "USER_COLOR",
    "layout_figure",
    "order_tasks",
    "heatmap_figure",
    "heatmap_block",
    "LARGE_N",
    "HEATMAP_MAX",
    "topk_figure",
    "weights_bar_figure",
    "weights_history_figure",
    "target_evidence_figure",
    "paired_diff_figure",
    "robustness_figure",
    "robustness_diff_figure",
    "metric_title",
    "metric_cell",
    "best_predictor",
    "predictor_quality_rows",
    "predictor_quality_figure",
]

MODALITY_COLORS = {"language": "#1f77b4", "vision": "#2ca02c", "vision-language": "#9467bd"}
OTHER_COLOR = "#7f7f7f"
COMMUNITY_COLORS = ["#E15F99", "#FB8500", "#1CA71C", "#222A2A", "#B68100", "#750D86", "#EB663B", "#511CFB",
                    "#00A08B", "#FB00D1", "#FC0080", "#B2828D", "#6C7C32", "#778AAE", "#862A16", "#A777F1"]
TARGET_COLOR = "#d62728"
#: the ring around the user's own (uploaded) tasks on the graph and the map
USER_COLOR = "#d946ef"


def community_color(c: int | None) -> str:
    if c is None:
        return OTHER_COLOR
    return COMMUNITY_COLORS[int(c) % len(COMMUNITY_COLORS)]


def _modality_color(m: str | None) -> str:
    return MODALITY_COLORS.get(m or "", OTHER_COLOR)


def _fmt(v: Any, pct: bool = True) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{100 * v:.1f}%" if pct else f"{v:.3f}"


def _node_size(acc: Any) -> float:
    """Marker diameter from expert accuracy (0..1): 12 px for 0, 40 px for 1; 14 px if unknown."""
    if acc is None or not isinstance(acc, (int, float)) or not math.isfinite(acc):
        return 14.0
    return 12.0 + 28.0 * max(0.0, min(1.0, float(acc)))


def graph_positions(G: nx.Graph, seed: int = 0) -> dict[str, tuple[float, float]]:
    """A deterministic force-directed layout (stronger similarity pulls closer)."""
    if G.number_of_nodes() == 0:
        return {}
    pos = nx.spring_layout(G, weight="weight", seed=seed, k=1.5 / math.sqrt(max(G.number_of_nodes(), 1)))
    return {n: (float(p[0]), float(p[1])) for n, p in pos.items()}


def _hover(name: str, d: Mapping[str, Any], extra: str = "") -> str:
    """A node's plotly tooltip: plotly renders its pseudo-HTML (``<span style>``, ``<a href>``), so every
    value from the study or a user (a task's description carries an upload's file name) is escaped."""
    e = _safe_label
    lines = [f"<b>{e(name)}</b>", f"modality: {e(d.get('modality', '?'))}"]
    if d.get("description"):
        desc = " ".join(str(d["description"]).split())
        lines.append(e(desc if len(desc) <= 90 else desc[:87] + "…"))
    if d.get("num_classes") is not None:
        lines.append(f"classes: {e(d['num_classes'])}, train examples: {e(d.get('num_train', '?'))}")
    lines.append(f"expert {e(d.get('metric') or 'accuracy')}: {_fmt(d.get('accuracy'))} "
                 f"(zero-shot {_fmt(d.get('zero_shot'))})")
    if d.get("community") is not None:
        lines.append(f"community {e(d['community'])}")
    if extra:
        lines.append(e(extra))
    return "<br>".join(lines)


#: above this many tasks the figures switch to a canvas (the graph) or WebGL traces (go.Scattergl, the
#: map), small markers, no per-edge hover, and communities drawn as a level of detail
LARGE_N = 300
#: up to this many tasks every node of the graph carries its name (the others smaller and grey,
#: placed after the target's, its sources' and the search matches'); above it only those do
NAME_ALL_N = 60
#: the font size (pixels) and colour of the names of nodes outside the focus
OTHER_LABEL_SIZE, OTHER_LABEL_COLOR = 9, "#555555"
#: the heatmap draws at most this many tasks (a 10,000 x 10,000 matrix is 10^8 cells)
HEATMAP_MAX = 150
#: at most this many community labels (the largest communities) on a large graph
MAX_COMMUNITY_LABELS = 40


def _pad_range(values: Sequence[float], frac: float = 0.08) -> list[float]:
    """An axis range with ``frac`` of the span as margin on both sides (labels are not clipped)."""
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if v.size == 0:
        return [-1.0, 1.0]
    lo, hi = float(v.min()), float(v.max())
    pad = (hi - lo) * frac or 0.5
    return [lo - pad, hi + pad]


def _community_summary(xy: Mapping[str, Sequence[float]], communities: Mapping[str, Any],
                       modality: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Communities as a level of detail, the one rule the map (plotly) and the graph (Vega-Lite) draw:
    per community, largest first, its members' centroid, a bubble diameter (area ~ members), the
    modalities it spans, a few example members, and a label for the largest
    :data:`MAX_COMMUNITY_LABELS` ("" for the rest)."""
    members: dict[int, list[str]] = {}
    for n, c in communities.items():
        if c is not None and n in xy:
            members.setdefault(int(c), []).append(n)
    if not members:
        return []
    order = sorted(members, key=lambda c: (-len(members[c]), c))
    biggest = max(len(m) for m in members.values())
    out = []
    for rank, c in enumerate(order):
        m = members[c]
        pts = np.array([xy[n][:2] for n in m], dtype=float)
        out.append({"community": c, "size": len(m), "x": float(pts[:, 0].mean()), "y": float(pts[:, 1].mean()),
                    "diameter": 14 + 46 * math.sqrt(len(m) / biggest), "color": community_color(c),
                    "modalities": ", ".join(sorted({modality.get(n) or "?" for n in m})),
                    "examples": ", ".join(sorted(m)[:5]),
                    "label": f"C{c} · {len(m)}" if rank < MAX_COMMUNITY_LABELS else ""})
    return out


#: the font size (pixels) of a community bubble's label, on the graph and on the map
BUBBLE_FONT = 10


def _bubble_texts(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The bubbles' labels as texts for :func:`place_labels` to keep clear of."""
    return [{"x": r["x"], "y": r["y"], "label": r["label"], "size": BUBBLE_FONT} for r in rows if r["label"]]


def _community_lod(fig: go.Figure, rows: Sequence[Mapping[str, Any]]) -> None:
    """:func:`_community_summary`'s bubbles as one plotly trace (the map above :data:`LARGE_N` tasks)."""
    if not rows:
        return
    fig.add_trace(go.Scatter(x=[r["x"] for r in rows], y=[r["y"] for r in rows], mode="markers+text",
                             text=[_safe_label(r["label"]) for r in rows], textposition="middle center",
                             textfont=dict(size=BUBBLE_FONT, color="#111"),
                             hovertext=[f"community {_safe_label(r['community'])}: {r['size']} tasks<br>"
                                        f"{_safe_label(r['modalities'])}<br>e.g. {_safe_label(r['examples'])}"
                                        for r in rows], hoverinfo="text",
                             customdata=[None] * len(rows), name="communities", legendgroup="communities",
                             marker=dict(size=[r["diameter"] for r in rows], color=[r["color"] for r in rows],
                                         opacity=0.22, line=dict(width=1.5, color=[r["color"] for r in rows]))))


def label_positions(pos: Mapping[str, Sequence[float]], labelled: Sequence[str]) -> dict[str, str]:
    """Each labelled node's preferred label side (plotly ``textposition`` names; :func:`place_labels`
    tries it first, on the graph and on the map): the side facing away from
    its nearest labelled neighbour (distances in axis-normalised units, since the two axes of a
    layout have different spans), so two close labels are drawn apart instead of on top of each
    other; a sideways label that would run off the plot's edge (outer quarter) goes above or below
    instead. With fewer than two labelled nodes there is nothing to avoid: empty, and the caller's
    own position stands."""
    names = [n for n in dict.fromkeys(labelled) if n in pos]
    if len(names) < 2:
        return {}
    xy = np.array([[float(v) for v in pos[n][:2]] for n in names])
    every = np.array([[float(v) for v in p[:2]] for p in pos.values()])
    span = np.ptp(every, axis=0)
    scale = np.where(span > 0, span, 1.0)
    xy = (xy - every.min(axis=0)) / scale
    out = {}
    for i, n in enumerate(names):
        d = xy - xy[i]
        dist = np.hypot(d[:, 0], d[:, 1])
        dist[i] = np.inf
        j = int(np.argmin(dist))
        dx, dy = d[j]
        vertical = "bottom center" if dy > 0 else "top center"
        if abs(dy) >= abs(dx):  # the neighbour is above or below: go the other way
            out[n] = vertical
        elif dx > 0:  # neighbour to the right: label left, unless that runs off the left edge
            out[n] = "middle left" if xy[i, 0] > 0.25 else vertical
        else:
            out[n] = "middle right" if xy[i, 0] < 0.75 else vertical
    return out


#: where a label sits beside its node, as Vega-Lite text-mark properties (from :func:`label_positions`'
#: plotly-style names)
_LABEL_MARKS = {
    "top center": {"align": "center", "baseline": "bottom"},
    "bottom center": {"align": "center", "baseline": "top"},
    "middle left": {"align": "right", "baseline": "middle"},
    "middle right": {"align": "left", "baseline": "middle"},
}
#: the plot width (pixels) :func:`place_labels` assumes. The graph is drawn at its column's width, which
#: the server does not know; this is about that column in a 1,280-pixel-wide window, and on a wider one
#: nodes only move further apart, while a label's text keeps its size
LABEL_WIDTH_PX = 700
#: how many places out from its node :func:`place_labels` tries for a label (one line further each)
LABEL_LEVELS = 6


def _label_offset(side: str, radius: float, level: int, line: float) -> tuple[float, float]:
    """(dx, dy) in pixels of a label on ``side`` of a node of ``radius``, pushed ``level`` lines out:
    above / below it moves further up / down; beside it, alternately up and down."""
    gap = radius + 2
    if side in ("top center", "bottom center"):
        return 0.0, (-1 if side == "top center" else 1) * (gap + level * line)
    shift = ((level + 1) // 2) * line * (-1 if level % 2 else 1)
    return (-gap - 1 if side == "middle left" else gap + 1), shift


def place_labels(rows: Sequence[Mapping[str, Any]], xdomain: Sequence[float], ydomain: Sequence[float],
                 height: float, width: float = LABEL_WIDTH_PX, avoid: Sequence[Mapping[str, Any]] = ()) -> list[dict]:
    """Where each label goes so that no two labels overlap, as far as it can: greedily, in the rows'
    order (the most important first), each takes the first free place among its preferred ``side``
    (:func:`label_positions`: away from its nearest labelled neighbour), the three other sides, then
    the same four pushed one to :data:`LABEL_LEVELS` - 1 lines further out, each also slid half the
    label along its side. A place is free when the label's box
    (estimated from its length and font size) stays inside the plot and overlaps no label placed
    before it, no labelled node's marker and no text of ``avoid`` (rows of x, y, label, size: text
    centred there, e.g. the community bubbles' labels). With no free place it takes the place that
    overlaps the least.

    ``rows``: x, y (data units), label, side, radius (pixels), size (font pixels), optional weight;
    ``xdomain`` / ``ydomain``: the axes' domains; ``height`` / ``width``: the plot in pixels
    (:data:`LABEL_WIDTH_PX`). Returns the rows with ``side``, ``dx`` and ``dy`` (pixels) set.
    """
    (x0, x1), (y0, y1) = xdomain, ydomain
    sx, sy = width / ((x1 - x0) or 1.0), height / ((y1 - y0) or 1.0)
    anchors = [((float(r["x"]) - x0) * sx, (y1 - float(r["y"])) * sy) for r in rows]
    nodes = [(ax - r["radius"], ay - r["radius"], ax + r["radius"], ay + r["radius"])
             for (ax, ay), r in zip(anchors, rows)]
    placed: list[tuple[float, float, float, float]] = []
    for a in avoid:
        ax, ay = (float(a["x"]) - x0) * sx, (y1 - float(a["y"])) * sy
        w, h = _text_size(a)
        placed.append((ax - w / 2, ay - h / 2, ax + w / 2, ay + h / 2))
    out = []
    for i, ((ax, ay), r) in enumerate(zip(anchors, rows)):
        (w, h), line = _text_size(r), float(r["size"]) * 1.25
        first = r["side"] if r["side"] in _LABEL_MARKS else "top center"
        sides = [first, *(s for s in _LABEL_MARKS if s != first)]
        best, least = None, float("inf")
        others = placed + [n for j, n in enumerate(nodes) if j != i]
        # nearest places first; at each, the label also slid half its length along its side (a label
        # above a node moved left or right, one beside it up or down) before going a line further out
        for level, side, slide in itertools.product(range(LABEL_LEVELS), sides, (0, -1, 1)):
            dx, dy = _label_offset(side, float(r["radius"]), level, line)
            if side in ("top center", "bottom center"):
                dx += slide * w / 2
            else:
                dy += slide * h
            mark = _LABEL_MARKS[side]
            left = ax + dx - {"left": 0.0, "center": w / 2, "right": w}[mark["align"]]
            top = ay + dy - {"top": 0.0, "middle": h / 2, "bottom": h}[mark["baseline"]]
            box = (left, top, left + w, top + h)
            # overlap with what is there, plus what runs off the plot
            cost = sum(_overlap_area(box, o) for o in others) \
                + max(0.0, w * h - _overlap_area(box, (0, 0, width, height), pad=0.0))
            if cost < least:
                best, least = (side, dx, dy, box), cost
            if cost < 1e-6:  # free (up to float rounding)
                break
        side, dx, dy, box = best
        placed.append(box)
        out.append({**r, "side": side, "dx": round(dx, 1), "dy": round(dy, 1)})
    return out


def _crowding(rows: Sequence[Mapping[str, Any]], xdomain: Sequence[float], ydomain: Sequence[float],
              height: float, width: float = LABEL_WIDTH_PX) -> dict[str, int]:
    """Per label, how many other labelled nodes lie within one label's box of it (pixels): the
    crowded ones are placed first, while the places around them are still free."""
    (x0, x1), (y0, y1) = xdomain, ydomain
    sx, sy = width / ((x1 - x0) or 1.0), height / ((y1 - y0) or 1.0)
    xy = np.array([[(float(r["x"]) - x0) * sx, (y1 - float(r["y"])) * sy] for r in rows]).reshape(-1, 2)
    size = np.array([_text_size(r) for r in rows]).reshape(-1, 2)
    out = {}
    for i, r in enumerate(rows):
        near = (np.abs(xy[:, 0] - xy[i, 0]) < size[i, 0]) & (np.abs(xy[:, 1] - xy[i, 1]) < 3 * size[i, 1])
        out[r["label"]] = int(near.sum()) - 1
    return out


def _text_size(r: Mapping[str, Any]) -> tuple[float, float]:
    """A label's estimated box (pixels): an average character of the sans-serif font is ~0.58 of its size."""
    size = float(r["size"])
    return len(str(r["label"])) * size * (0.64 if r.get("weight") == "bold" else 0.58), size * 1.15


def _overlap_area(a: Sequence[float], b: Sequence[float], pad: float = 1.0) -> float:
    """The area two boxes (left, top, right, bottom) share once each edge is moved ``pad`` pixels out
    (so boxes closer than that count as touching)."""
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + pad) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + pad)


def _label_layers(rows: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Text layers for a few labels (each row: x, y, label, side, dx, dy, color, size, as
    :func:`place_labels` returns them); one layer per distinct mark, since Vega-Lite's
    align/baseline/dx/dy are mark properties."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        key = (r["side"], r["dx"], r["dy"], r["color"], r["size"], r.get("weight", "normal"))
        groups.setdefault(key, []).append({"x": r["x"], "y": r["y"], "label": r["label"]})
    return [{"data": {"values": values},
             "mark": {"type": "text", **_LABEL_MARKS[side], "dx": dx, "dy": dy,
                      "fontSize": size, "fontWeight": weight, "color": color},
             "encoding": {"text": {"field": "label", "type": "nominal"}}}
            for (side, dx, dy, color, size, weight), values in groups.items()]


def _tooltip_row(name: str, d: Mapping[str, Any], degree: int, role: str) -> dict[str, Any]:
    """A node's tooltip fields (plain text: Vega's tooltip handler escapes every value)."""
    desc = str(d.get("description") or "")
    return {
        "name": name,
        "modality": d.get("modality") or "other",
        "family": d.get("family") or ("user" if d.get("user_task") else "–"),
        "source": str(d["gated"])[:140] if d.get("gated") else "offered",  # the gate's reason
        "description": desc if len(desc) <= 90 else desc[:87] + "…",
        "classes": "–" if d.get("num_classes") is None else f"{d['num_classes']} (train examples: {d.get('num_train', '?')})",
        "expert": f"{d.get('metric') or 'accuracy'} {_fmt(d.get('accuracy'))} (zero-shot {_fmt(d.get('zero_shot'))})",
        "community": "–" if d.get("community") is None else str(d["community"]),
        "degree": int(degree),
        "role": role,
    }


_NODE_TOOLTIP = [{"field": "name", "title": "task"}, {"field": "role", "title": "role"},
                 {"field": "modality", "title": "modality"}, {"field": "family", "title": "family"},
                 {"field": "source", "title": "as a source"}, {"field": "description", "title": "description"},
                 {"field": "classes", "title": "classes"}, {"field": "expert", "title": "expert"},
                 {"field": "community", "title": "community"}, {"field": "degree", "title": "degree"}]
#: marker shapes of the task families in the graph's legend (Vega's symbols, in family order)
FAMILY_SHAPES = ("circle", "square", "diamond", "triangle-up", "triangle-down", "cross", "triangle-right",
                 "triangle-left")
#: a five-pointed star as an SVG path in Vega's unit square (Vega's symbols have no star)
STAR = ("M0,-1L0.2245,-0.309L0.9511,-0.309L0.3633,0.118L0.5878,0.809L0,0.382L-0.5878,0.809L-0.3633,0.118"
        "L-0.9511,-0.309L-0.2245,-0.309Z")
#: the task graph's point selection (a click on a node): its Vega-Lite parameter name and field
PICK = "pick"


def graph_figure(G: nx.Graph, pos: Mapping[str, Sequence[float]] | None = None, target: str | None = None,
                 sources: Sequence[str] = (), title: str | None = None, height: int = 620,
                 highlight: Sequence[str] = (), all_edges: bool | None = None,
                 rings: Sequence[str] = ()) -> dict[str, Any]:
    """The task graph as an interactive network: a Vega-Lite spec (a JSON-able dict for
    ``st.vega_lite_chart``), not a plotly figure, because it is the dashboard's first view and
    plotly alone costs about 1.5 s of every page open in the browser (``bench/bench_dashboard.py
    --floors``); Vega-Lite is built into Streamlit.

    Nodes: fill = modality, size = expert accuracy, outline = community (the legend lists each
    community and the modalities it spans). Edges: width and opacity grow with similarity;
    hovering an edge shows its similarity. ``target`` is drawn as a star *under* its ``sources``
    (e.g. the top-k predicted experts), which are joined to it by dashed red lines. The target, its
    sources and ``highlight`` (e.g. search matches) are labelled first; on a graph of at most
    :data:`NAME_ALL_N` tasks every other node is named too, in smaller grey type, each label placed
    by :func:`place_labels` clear of the others; above that every other name shows on hover. ``rings`` (the user's own tasks) are ringed.
    Clicking a node selects it in the point parameter :data:`PICK` (field ``name``); dragging pans
    and the mouse wheel zooms.

    With more than :data:`LARGE_N` nodes: small fixed-size markers coloured by modality, no edge
    hover, edges drawn only around the target (its sources' edges) unless ``all_edges`` (default:
    all edges up to 20,000), and each community drawn as one labelled bubble (the level of detail
    that stays readable with thousands of tasks), drawn on one canvas, so 10,000 nodes stay cheap.
    """
    pos = dict(pos) if pos is not None else graph_positions(G)
    large = G.number_of_nodes() > LARGE_N
    focus = [x for x in dict.fromkeys([target, *sources, *highlight]) if x is not None and x in pos]
    named = focus + [n for n in G if n in pos and n not in focus] if G.number_of_nodes() <= NAME_ALL_N else focus
    weights = [float(w) for _, _, w in G.edges(data="weight", default=0.0)]
    lo, hi = (min(weights), max(weights)) if weights else (0.0, 1.0)
    span = (hi - lo) or 1.0
    if all_edges is None:
        all_edges = G.number_of_edges() <= 20_000
    edges = G.edges(data="weight", default=0.0) if (all_edges or not large) else \
        G.edges(focus, data="weight", default=0.0)
    # coordinates rounded to 1e-5 of the layout's span (far below a pixel): the spec is JSON sent to
    # the browser, a megabyte per 1,000 tasks with full float reprs
    xs = [float(p[0]) for p in pos.values()]
    ys = [float(p[1]) for p in pos.values()]
    nd = max(0, 5 - math.floor(math.log10(max(np.ptp(xs), np.ptp(ys), 1e-12)))) if xs else 5
    pos = {n: (round(float(p[0]), nd), round(float(p[1]), nd)) for n, p in pos.items()}
    edge_rows = []
    for u, v, w in edges:
        b = min(3, int(4 * (float(w) - lo) / span))
        row = {"x": pos[u][0], "y": pos[u][1], "x2": pos[v][0], "y2": pos[v][1],
               "width": round((0.8 + 1.6 * b) if not large else (0.5 + 0.4 * b), 2),
               "alpha": round((0.25 + 0.18 * b) if not large else (0.10 + 0.08 * b), 2)}
        if not large:  # hovered on small graphs only
            row.update(pair=f"{u} — {v}", similarity=round(float(w), 3))
        edge_rows.append(row)
    layers: list[dict] = []
    if edge_rows:
        enc = {"x2": {"field": "x2"}, "y2": {"field": "y2"},
               "strokeWidth": {"field": "width", "type": "quantitative", "scale": None},
               "opacity": {"field": "alpha", "type": "quantitative", "scale": None}}
        if not large:
            enc["tooltip"] = [{"field": "pair", "title": "edge"}, {"field": "similarity", "title": "similarity"}]
        layers.append({"name": "edges", "data": {"values": edge_rows},
                       "mark": {"type": "rule", "color": "#5a5a5a"}, "encoding": enc})
    if target is not None and target in pos:
        dashed = [{"x": float(pos[target][0]), "y": float(pos[target][1]), "x2": float(pos[s][0]),
                   "y2": float(pos[s][1])} for s in dict.fromkeys(sources) if s in pos and s != target]
        if dashed:
            layers.append({"name": "target → top-k sources", "data": {"values": dashed},
                           "mark": {"type": "rule", "color": TARGET_COLOR, "strokeWidth": 2.5, "strokeDash": [6, 4]},
                           "encoding": {"x2": {"field": "x2"}, "y2": {"field": "y2"}}})
    bubbles = _community_summary(pos, dict(G.nodes(data="community")), dict(G.nodes(data="modality"))) \
        if large else []
    layers += _community_bubbles(bubbles)
    # the target first, so its sources (drawn next) stay visible on top of the star
    # the focus labels face away from each other (as without the other names); the others away from
    # their nearest named neighbour; at most NAME_ALL_N names, or the few focus labels: cheap at any size
    sides = label_positions(pos, focus)
    other_sides = label_positions(pos, named) if len(named) > len(focus) else {}
    labels: list[dict] = []
    if target is not None and target in G:
        d = G.nodes[target]
        diameter = (_node_size(d.get("accuracy")) + 2) if not large else 16
        row = {"x": float(pos[target][0]), "y": float(pos[target][1]),
               **_tooltip_row(target, d, G.degree(target), "the target"), "fill": _modality_color(d.get("modality"))}
        layers.append({"name": "target", "data": {"values": [row]},
                       "mark": {"type": "point", "shape": STAR, "filled": True, "size": diameter ** 2 * 1.6,
                                "opacity": 0.85, "stroke": TARGET_COLOR, "strokeWidth": 2},
                       "encoding": {"fill": {"field": "fill", "type": "nominal", "scale": None},
                                    "tooltip": _NODE_TOOLTIP}})
        # the star's half-width: its area is size (px^2), plus the outline
        labels.append({"x": row["x"], "y": row["y"], "label": target, "side": sides.get(target, "bottom center"),
                       "radius": diameter * 1.6 ** 0.5 / 2 + 1, "color": TARGET_COLOR, "size": 13, "weight": "bold"})
    comms: dict[int, list[str]] = {}
    for n, c in G.nodes(data="community"):
        if c is not None:
            comms.setdefault(int(c), []).append(n)
    comm_label = {c: f"community {c}: {len(m)} tasks ("
                     f"{', '.join(sorted({G.nodes[n].get('modality') or '?' for n in m}))})" for c, m in comms.items()}
    rows = []
    for n, d in G.nodes(data=True):
        if n == target:
            continue
        c = d.get("community")
        rows.append({"x": float(pos[n][0]), "y": float(pos[n][1]), **_tooltip_row(n, d, G.degree(n), "task"),
                     "size": (_node_size(d.get("accuracy")) if not large else 5.0) ** 2})
        if not large:  # the outline's legend entry (large graphs draw communities as bubbles instead)
            rows[-1]["outline"] = comm_label[int(c)] if c is not None else "no community"
        if n in focus:
            labels.append({"x": rows[-1]["x"], "y": rows[-1]["y"], "label": n, "side": sides.get(n, "top center"),
                           "radius": (rows[-1]["size"] ** 0.5) / 2, "color": "#111", "size": 12})
        elif n in named:  # a small study: every task named, in a quieter type
            labels.append({"x": rows[-1]["x"], "y": rows[-1]["y"], "label": n, "side": other_sides.get(n, "top center"),
                           "radius": (rows[-1]["size"] ** 0.5) / 2, "color": OTHER_LABEL_COLOR,
                           "size": OTHER_LABEL_SIZE})
    mods = sorted({r["modality"] for r in rows} | ({G.nodes[target].get("modality") or "other"}
                                                   if target in G else set()),
                  key=lambda m: (list(MODALITY_COLORS).index(m) if m in MODALITY_COLORS else 9, m))
    order = sorted(comms)
    node_enc: dict[str, Any] = {
        "fill": {"field": "modality", "type": "nominal", "title": "modality (fill)",
                 "scale": {"domain": mods, "range": [_modality_color(m) for m in mods]}},
        "size": {"field": "size", "type": "quantitative", "scale": None},
        "tooltip": _NODE_TOOLTIP,
    }
    families = sorted({r["family"] for r in rows} - {"–"})
    if families and not large:  # the task families (declared with the suite): one marker shape each
        node_enc["shape"] = {"field": "family", "type": "nominal", "title": "family (shape)",
                             "scale": {"domain": families, "range": [FAMILY_SHAPES[i % len(FAMILY_SHAPES)]
                                                                     for i in range(len(families))]}}
    if not large and comms:
        none = ["no community"] if any(r["outline"] == "no community" for r in rows) else []
        node_enc["stroke"] = {"field": "outline", "type": "nominal", "title": "communities (outline)",
                              "scale": {"domain": [comm_label[c] for c in order] + none,
                                        "range": [community_color(c) for c in order] + [OTHER_COLOR] * len(none)},
                              "legend": {"orient": "bottom", "columns": 2, "labelLimit": 420}}
    layers.append({"name": "tasks", "data": {"values": rows},
                   "params": [{"name": PICK, "select": {"type": "point", "fields": ["name"], "on": "click",
                                                        "toggle": False}},
                              {"name": "zoom", "select": {"type": "interval", "encodings": ["x", "y"]},
                               "bind": "scales"}],
                   "mark": {"type": "point", "shape": "circle", "filled": True,
                            "opacity": 0.92 if not large else 0.75, "strokeWidth": 3 if not large else 0,
                            "cursor": "pointer"},
                   "encoding": node_enc})
    rings = [n for n in dict.fromkeys(rings) if n in pos]
    if rings:
        kind = "your task" + ("s" if len(rings) > 1 else "")
        layers.append({"name": "your tasks", "data": {"values": [
            {"x": float(pos[n][0]), "y": float(pos[n][1]), "name": f"your task: {n}", "kind": kind} for n in rings]},
            "mark": {"type": "point", "shape": "circle", "filled": False, "size": 34 ** 2, "strokeWidth": 4},
            "encoding": {"stroke": {"field": "kind", "type": "nominal", "title": None,  # a legend entry
                                    "scale": {"domain": [kind], "range": [USER_COLOR]},
                                    "legend": {"orient": "top"}},
                         "tooltip": [{"field": "name", "title": "task"}]}})
    xdom, ydom = _pad_range(xs, 0.04), _pad_range(ys, 0.06)
    rank = {n: i for i, n in enumerate(focus)}  # the target, then its sources, then the rest
    crowd = _crowding(labels, xdom, ydom, height)  # the rest: the most crowded first, while places are free
    layers += _label_layers(place_labels(sorted(labels, key=lambda r: (rank.get(r["label"], len(rank)),
                                                                       -crowd[r["label"]], r["label"])),
                                         xdom, ydom, height, avoid=_bubble_texts(bubbles)))
    spec: dict[str, Any] = {
        "width": "container", "height": height,
        # x and y are shared by every layer (the layers add their own channels)
        "encoding": {"x": {"field": "x", "type": "quantitative", "axis": None,
                           "scale": {"domain": xdom, "zero": False, "nice": False}},
                     "y": {"field": "y", "type": "quantitative", "axis": None,
                           "scale": {"domain": ydom, "zero": False, "nice": False}}},
        "layer": layers,
        # the rings' legend entry is not one of the communities' outlines
        "resolve": {"scale": {"stroke": "independent"}, "legend": {"stroke": "independent"}},
        "config": {"view": {"stroke": None}, "legend": {"orient": "bottom", "direction": "horizontal",
                                                        "labelFontSize": 12, "titleFontSize": 12}},
    }
    if large:  # one canvas instead of an SVG element per node (Streamlit's default renderer is SVG)
        spec["usermeta"] = {"embedOptions": {"renderer": "canvas"}}
    if title:
        spec["title"] = title
    return spec


def _community_bubbles(summary: Sequence[Mapping[str, Any]]) -> list[dict]:
    """:func:`_community_summary`'s bubbles as Vega-Lite layers (the graph above :data:`LARGE_N` tasks)."""
    rows = [{"x": r["x"], "y": r["y"], "size": r["diameter"] ** 2, "color": r["color"],
             "community": f"community {r['community']}: {r['size']} tasks", "modalities": r["modalities"],
             "examples": r["examples"], "label": r["label"]}
            for r in summary]
    if not rows:
        return []
    color = {"field": "color", "type": "nominal", "scale": None}
    return [
        {"name": "communities", "data": {"values": rows},
         "mark": {"type": "circle", "opacity": 0.22, "strokeOpacity": 0.9, "strokeWidth": 1.5},
         "encoding": {"size": {"field": "size", "type": "quantitative", "scale": None}, "fill": color,
                      "stroke": color,
                      "tooltip": [{"field": "community", "title": "community"},
                                  {"field": "modalities", "title": "modalities"},
                                  {"field": "examples", "title": "e.g."}]}},
        {"name": "community labels", "data": {"values": [r for r in rows if r["label"]]},
         "mark": {"type": "text", "fontSize": BUBBLE_FONT, "color": "#111"},
         "encoding": {"text": {"field": "label", "type": "nominal"}}},
    ]


def layout_figure(names: Sequence[str], coords: np.ndarray, attrs: Mapping[str, Mapping[str, Any]],
                  communities: Mapping[str, int] | None = None, target: str | None = None,
                  title: str | None = None, height: int = 560, sources: Sequence[str] = (),
                  highlight: Sequence[str] = ()) -> go.Figure:
    """The 2-D map of the task embeddings (UMAP or its fallback): colour = modality, outline =
    community; the target, if given, is a star under its ``sources``. Labels only for the target,
    its sources and ``highlight``, as annotations placed apart by :func:`place_labels` (as on the
    graph); the axes get a margin so no label is clipped at the edge. Above
    :data:`LARGE_N` tasks: WebGL markers and community bubbles (as :func:`graph_figure` draws them)."""
    coords = np.asarray(coords, dtype=float)
    names = list(names)
    communities = dict(communities or {})
    large = len(names) > LARGE_N
    xy = {n: (coords[i, 0], coords[i, 1]) for i, n in enumerate(names)}
    focus = [x for x in [*sources, *highlight] if x in xy and x != target]
    fig = go.Figure()
    bubbles = _community_summary(xy, communities, {n: attrs.get(n, {}).get("modality") for n in names}) \
        if large else []
    _community_lod(fig, bubbles)
    sides = label_positions(xy, [x for x in [target, *focus] if x is not None])
    if target is not None and target in xy:
        i = names.index(target)
        a = attrs.get(target, {})
        fig.add_trace(go.Scatter(
            x=[coords[i, 0]], y=[coords[i, 1]], mode="markers", name=f"target: {target}", customdata=[target],
            hovertext=[_hover(target, {**a, "community": communities.get(target)})], hoverinfo="text",
            marker=dict(size=(_node_size(a.get("accuracy")) + 2) if not large else 16, opacity=0.85,
                        color=_modality_color(a.get("modality")), symbol="star", line=dict(width=2, color=TARGET_COLOR))))
    idx_by_mod: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        idx_by_mod.setdefault(attrs.get(n, {}).get("modality") or "other", []).append(i)
    for m in sorted(idx_by_mod, key=lambda m: (list(MODALITY_COLORS).index(m) if m in MODALITY_COLORS else 9, m)):
        idx = [i for i in idx_by_mod[m] if names[i] != target]
        if not idx:
            continue
        ns = [names[i] for i in idx]
        hover = [_hover(n, {**attrs.get(n, {}), "community": communities.get(n)}) for n in ns]
        if large:
            fig.add_trace(go.Scattergl(x=coords[idx, 0], y=coords[idx, 1], mode="markers", name=m, customdata=ns,
                                       hovertext=hover, hoverinfo="text",
                                       marker=dict(size=5, color=_modality_color(m), opacity=0.75)))
        else:
            fig.add_trace(go.Scatter(
                x=coords[idx, 0], y=coords[idx, 1], mode="markers", name=m, customdata=ns, hovertext=hover,
                hoverinfo="text",
                marker=dict(size=[_node_size(attrs.get(n, {}).get("accuracy")) for n in ns], color=_modality_color(m),
                            line=dict(width=3, color=[community_color(communities.get(n)) for n in ns]))))
    xrange = _pad_range(coords[:, 0] if len(names) else [])
    yrange = _pad_range(coords[:, 1] if len(names) else [], 0.1)
    # labels as annotations placed by place_labels (a trace's text can only sit on one of 9 fixed sides);
    # the plot area is the figure less its margins, axis titles and the legend below (~110 px)
    rows = []
    for n in dict.fromkeys([target, *focus]):
        if n is None or n not in xy:
            continue
        a = attrs.get(n, {})
        if large:
            diameter = 16 if n == target else 5
        else:
            diameter = _node_size(a.get("accuracy")) + (2 if n == target else 0)
        rows.append({"x": float(xy[n][0]), "y": float(xy[n][1]), "label": n, "side": sides.get(n, "top center"),
                     "radius": diameter / 2 + (2 if n == target or not large else 0), "size": 12,
                     "color": TARGET_COLOR if n == target else "#111"})
    for r in place_labels(rows, xrange, yrange, max(100, height - 110), avoid=_bubble_texts(bubbles)):
        mark = _LABEL_MARKS[r["side"]]
        fig.add_annotation(x=r["x"], y=r["y"], text=_safe_label(r["label"]), showarrow=False, xshift=r["dx"],
                           yshift=-r["dy"],
                           xanchor=mark["align"], yanchor=mark["baseline"], font=dict(size=r["size"], color=r["color"]),
                           name=f"label: {r['label']}")
    fig.update_layout(title=dict(text=title) if title else None, height=height, plot_bgcolor="white",
                      margin=dict(l=10, r=10, t=40 if title else 10, b=10),
                      legend=dict(orientation="h", yanchor="top", y=-0.08, xanchor="left", x=0),
                      xaxis=dict(title=dict(text="dimension 1"), zeroline=False, showgrid=True, gridcolor="#eee",
                                 range=xrange),
                      yaxis=dict(title=dict(text="dimension 2"), zeroline=False, showgrid=True, gridcolor="#eee",
                                 range=yrange))
    return fig


def heatmap_block(names: Sequence[str], sim: np.ndarray, target: str, size: int = 60) -> list[str]:
    """The ``size`` tasks a large heatmap shows: ``target`` and its ``size - 1`` most similar."""
    names = list(names)
    if target not in names:
        raise ValueError(f"unknown task {target!r}")
    row = np.asarray(sim, dtype=float)[names.index(target)].copy()
    row[names.index(target)] = np.inf
    keep = np.argsort(-row, kind="stable")[:max(2, min(size, len(names)))]
    return [names[i] for i in keep]


def order_tasks(names: Sequence[str], by: str = "community", communities: Mapping[str, int] | None = None,
                modalities: Mapping[str, str | None] | None = None, sim: np.ndarray | None = None) -> list[str]:
    """Task order for the heatmap: ``community`` (then modality, then name), ``modality``,
    ``cluster`` (average-linkage hierarchical clustering of 1 - similarity) or ``name``."""
    names = list(names)
    communities = dict(communities or {})
    modalities = dict(modalities or {})
    mod_rank = {m: i for i, m in enumerate(MODALITY_COLORS)}

    def mkey(n):
        return mod_rank.get(modalities.get(n) or "", 9)

    if by == "community":
        return sorted(names, key=lambda n: (communities.get(n, 1 << 30), mkey(n), n))
    if by == "modality":
        return sorted(names, key=lambda n: (mkey(n), n))
    if by == "name":
        return sorted(names)
    if by == "cluster":
        if sim is None:
            raise ValueError("ordering by cluster needs the similarity matrix")
        if len(names) < 3:
            return names
        from scipy.cluster.hierarchy import leaves_list, linkage
        from scipy.spatial.distance import squareform

        S = np.asarray(sim, dtype=float)
        D = np.clip(1.0 - (S + S.T) / 2.0, 0.0, None)
        np.fill_diagonal(D, 0.0)
        order = leaves_list(linkage(squareform(D, checks=False), method="average"))
        return [names[i] for i in order]
    raise ValueError(f"order must be community, modality, cluster or name, got {by!r}")


def heatmap_figure(names: Sequence[str], sim: np.ndarray, order: Sequence[str] | None = None,
                   communities: Mapping[str, int] | None = None, title: str | None = None,
                   height: int | None = None) -> go.Figure:
    """Similarity heatmap in ``order`` (default: as given); the diagonal is blanked so the colour
    scale shows the off-diagonal structure; community boundaries are outlined."""
    names = list(names)
    order = list(order) if order is not None else names
    if len(order) > HEATMAP_MAX:
        raise ValueError(f"a heatmap of {len(order)} tasks is not readable (and {len(order) ** 2:,} cells is too "
                         f"much for a browser); show a block of at most {HEATMAP_MAX} (heatmap_block)")
    pos_of = {n: i for i, n in enumerate(names)}
    idx = [pos_of[n] for n in order]
    S = np.asarray(sim, dtype=float)[np.ix_(idx, idx)].copy()
    np.fill_diagonal(S, np.nan)
    z = [[None if not math.isfinite(v) else round(float(v), 4) for v in row] for row in S]
    n = len(order)
    fig = go.Figure(go.Heatmap(z=z, x=order, y=order, colorscale="Viridis",
                               colorbar=dict(title=dict(text="sim"), len=1.0, lenmode="fraction", thickness=14,
                                             y=0.5, yanchor="middle"),
                               hovertemplate="target %{y}<br>source %{x}<br>similarity %{z:.3f}<extra></extra>",
                               hoverongaps=False))
    if communities:
        start = 0
        for i in range(1, n + 1):
            if i == n or communities.get(order[i]) != communities.get(order[start]):
                c = communities.get(order[start])
                fig.add_shape(type="rect", x0=start - 0.5, x1=i - 0.5, y0=start - 0.5, y1=i - 0.5,
                              line=dict(color=community_color(c), width=3), fillcolor="rgba(0,0,0,0)")
                start = i
    size = height or max(420, min(1100, 28 * n + 180))
    fig.update_layout(title=dict(text=title) if title else None, height=size,
                      margin=dict(l=10, r=10, t=40 if title else 10, b=10),
                      # no scaleanchor: with it the plot area shrinks to a square while the colour
                      # bar keeps the full height (it looked 1.5x the matrix)
                      xaxis=dict(tickangle=-45, tickfont=dict(size=10), constrain="domain"),
                      yaxis=dict(autorange="reversed", tickfont=dict(size=10)))
    return fig


def topk_figure(sources: Sequence[Any], target: str, height: int | None = None) -> go.Figure:
    """Predicted similarity (left) beside the measured transfer gain (right) for each of the
    top-k sources of ``target``. ``sources``: objects or dicts with name, similarity, modality,
    gain (points, None when not measured)."""
    def get(s, k):
        return s[k] if isinstance(s, Mapping) else getattr(s, k)

    names = [get(s, "name") for s in sources]
    sims = [float(get(s, "similarity")) for s in sources]
    gains = [get(s, "gain") for s in sources]
    colors = [_modality_color(get(s, "modality")) for s in sources]
    measured = any(g is not None for g in gains)
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=("predicted similarity", "measured gain (accuracy points)"))
    fig.add_trace(go.Bar(y=names, x=sims, orientation="h", marker=dict(color=colors), name="similarity",
                         text=[f"{s:.3f}" for s in sims], textposition="auto",
                         hovertemplate="%{y}: similarity %{x:.3f}<extra></extra>"), row=1, col=1)
    gx = [g if g is not None else 0.0 for g in gains]
    fig.add_trace(go.Bar(y=names, x=gx, orientation="h", name="measured gain",
                         marker=dict(color=["#bbbbbb" if g is None else ("#2ca02c" if g >= 0 else "#d62728")
                                            for g in gains]),
                         text=["not measured" if g is None else f"{g:+.1f}" for g in gains], textposition="auto",
                         hovertemplate="%{y}: %{text}<extra></extra>"), row=1, col=2)
    fig.update_yaxes(autorange="reversed", row=1, col=1)
    fig.update_xaxes(title=dict(text="similarity"), row=1, col=1)
    fig.update_xaxes(title=dict(text="gain vs. training from scratch" if measured else
                                f"{target} is not in the transfer matrix"), row=1, col=2)
    fig.update_layout(height=height or max(220, 60 + 42 * len(names)), showlegend=False,
                      margin=dict(l=10, r=10, t=40, b=10), plot_bgcolor="white", bargap=0.25)
    return fig


def weights_bar_figure(sources: Sequence[str], weights: Sequence[float], title: str | None = None) -> go.Figure:
    """The normalised mixing weights a run will start from."""
    fig = go.Figure(go.Bar(x=list(weights), y=list(sources), orientation="h", marker=dict(color="#4c78a8"),
                           text=[f"{w:.3f}" for w in weights], textposition="auto",
                           hovertemplate="%{y}: %{x:.3f}<extra></extra>"))
    fig.update_layout(title=dict(text=title) if title else None, height=max(160, 50 + 36 * len(sources)),
                      margin=dict(l=10, r=10, t=36 if title else 10, b=10), plot_bgcolor="white",
                      xaxis=dict(range=[0, 1], title=dict(text="weight")), yaxis=dict(autorange="reversed"))
    return fig


def weights_history_figure(history: Sequence[Mapping[str, Any]], sources: Sequence[str],
                           title: str | None = None) -> go.Figure:
    """Mixing weights over training steps (one line per source) and the loss (dotted, right axis)."""
    steps = [h.get("step", i) for i, h in enumerate(history)]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    for j, s in enumerate(sources):
        fig.add_trace(go.Scatter(x=steps, y=[(h.get("weights") or [None] * len(sources))[j] for h in history],
                                 mode="lines+markers", name=s), secondary_y=False)
    loss_pts = [(st, h["loss"]) for st, h in zip(steps, history) if h.get("loss") is not None]
    if loss_pts:
        fig.add_trace(go.Scatter(x=[p[0] for p in loss_pts], y=[p[1] for p in loss_pts], mode="lines",
                                 name="training loss", line=dict(dash="dot", color="#888")), secondary_y=True)
    fig.update_yaxes(title=dict(text="weight"), rangemode="tozero", secondary_y=False)
    # plain numbers (".3~g": 0.7, 2.74e-6), never an SI prefix: a loss of 2.7µ reads as micro-units
    fig.update_yaxes(title=dict(text="loss"), secondary_y=True, showgrid=False, tickformat=".3~g",
                     rangemode="tozero")
    fig.update_xaxes(title=dict(text="step"))
    # the legend below the plot, clear of both axes' top ticks
    fig.update_layout(title=dict(text=title) if title else None, height=400, plot_bgcolor="white",
                      legend=dict(orientation="h", yanchor="top", y=-0.22, xanchor="left", x=0),
                      margin=dict(l=10, r=10, t=40 if title else 16, b=10))
    return fig


#: the reference lines of :func:`target_evidence_figure`: (colour, dash)
REFERENCE_STYLE = {"zero-shot": ("#7f7f7f", "dash"), "target-only": ("#d62728", "dot")}


def target_evidence_figure(approaches: Sequence[Mapping[str, Any]], runs: Sequence[Mapping[str, Any]],
                           refs: Mapping[str, float], metric: str = "accuracy", title: str | None = None) -> go.Figure:
    """One target at one regime: the study's approaches (each seed a small dot, the mean ± std a
    diamond with a bar; best first), the user's runs (stars, red when flagged) beside them, and the
    reference lines (zero-shot, target-only's mean) across the whole plot. Scores 0..1 (the task's
    metric), shown as percentages.

    ``approaches``: rows of :func:`pitune_core.study.read.evidence.target_measurements` (label, scores,
    mean, std); ``runs``: label, score, flagged; ``refs``: {name: score}."""
    fig = go.Figure()
    labels = [_safe_label(a["label"]) for a in approaches]
    for a, lab in zip(approaches, labels):
        fig.add_trace(go.Scatter(x=[lab] * len(a["scores"]), y=[float(s) for s in a["scores"]], mode="markers",
                                 marker=dict(size=6, color="#9ecae1"), showlegend=False,
                                 hovertemplate=f"{lab}: seed %{{y:.1%}}<extra></extra>"))
    if approaches:
        fig.add_trace(go.Scatter(
            x=labels, y=[float(a["mean"]) for a in approaches], mode="markers", name="study: mean ± std over seeds",
            marker=dict(symbol="diamond", size=11, color="#1f77b4"),
            error_y=dict(type="data", array=[0.0 if a["std"] != a["std"] else float(a["std"]) for a in approaches]),
            hovertemplate="%{x}: mean %{y:.1%}<extra></extra>"))
    shown = [r for r in runs if r.get("score") is not None]
    if shown:
        fig.add_trace(go.Scatter(
            x=[_safe_label(r["label"]) for r in shown], y=[float(r["score"]) for r in shown], mode="markers",
            name="your runs (red: below a reference line)",
            marker=dict(symbol="star", size=15, line=dict(width=1, color="black"),
                        color=["#d62728" if r.get("flagged") else "#2ca02c" for r in shown]),
            hovertemplate="%{x}: %{y:.1%}<extra></extra>"))
    for name, value in refs.items():
        color, dash = REFERENCE_STYLE.get(name, ("#555555", "dash"))
        fig.add_hline(y=float(value), line=dict(color=color, dash=dash, width=1.5),
                      annotation=dict(text=f"{_safe_label(name)} {100 * float(value):.1f}", font=dict(color=color)),
                      annotation_position="top left")
    fig.update_layout(title=dict(text=title) if title else None, height=420, showlegend=True,
                      legend=dict(orientation="h", yanchor="top", y=-0.25, xanchor="left", x=0),
                      margin=dict(l=10, r=10, t=40 if title else 20, b=10), plot_bgcolor="white",
                      yaxis=dict(title=dict(text=f"test {metric.replace('_', '-')}"), tickformat=".0%",
                                 gridcolor="#eee"),
                      xaxis=dict(title=None, tickangle=-30))
    return fig


_DIFF_COLORS = {"above": "#2ca02c", "below": "#d62728", "spans": "#555555"}


def _safe_label(v: Any) -> str:
    """A label plotly shows as text: its pseudo-HTML (``<b>``, ``<a href>``, entities) cannot come
    out of a file-supplied name (names are validated identifiers already; this is the second fence)."""
    import html

    return html.escape(" ".join(str(v).split()), quote=True)


def paired_diff_figure(diffs: Sequence[Mapping[str, Any]], title: str | None = None) -> go.Figure:
    """Paired differences with their 95% CIs as a dot plot: one dot per comparison (``label``, e.g.
    "π-Tuning − target-only"), a horizontal error bar for the bootstrap CI, sorted by mean (largest
    on top), one facet per regime, a vertical line at 0, the x axis zoomed to the CIs (0 kept in
    view; never a bar from 0). A dot is green when its CI lies above 0, red below, grey when it
    spans 0 or has none; hover shows mean, CI, W/T/L, n targets and the Wilcoxon p.

    ``diffs`` rows (:func:`pitune_core.study.read.evidence.summarise`'s ``diffs``): regime, label, mean,
    ci_low, ci_high, wins, ties, losses, n, p_wilcoxon. Rows without a finite mean are left out."""
    def fin(x) -> bool:
        return isinstance(x, (int, float)) and math.isfinite(x)

    rows = [d for d in diffs if fin(d.get("mean")) and d.get("n")]
    regimes = list(dict.fromkeys(str(d.get("regime", "")) for d in rows))
    if not rows:
        fig = go.Figure()
        fig.add_annotation(text="no paired difference yet (no target has every planned seed of both "
                                "approaches done)", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
        fig.update_layout(height=160, plot_bgcolor="white", xaxis=dict(visible=False), yaxis=dict(visible=False),
                          margin=dict(l=10, r=10, t=40 if title else 10, b=10),
                          title=dict(text=_safe_label(title)) if title else None)
        return fig
    per = {g: sorted((d for d in rows if str(d.get("regime", "")) == g), key=lambda d: float(d["mean"]))
           for g in regimes}
    fig = make_subplots(rows=len(regimes), cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=[_safe_label(g) for g in regimes],
                        row_heights=[max(1, len(per[g])) for g in regimes])
    lo_all, hi_all = [0.0], [0.0]
    for i, g in enumerate(regimes, start=1):
        ds = per[g]
        labels = [_safe_label(d.get("label", "")) for d in ds]
        means = [float(d["mean"]) for d in ds]
        lo = [float(d["ci_low"]) if fin(d.get("ci_low")) else m for d, m in zip(ds, means)]
        hi = [float(d["ci_high"]) if fin(d.get("ci_high")) else m for d, m in zip(ds, means)]
        lo_all += lo
        hi_all += hi
        state = ["above" if fin(d.get("ci_low")) and d["ci_low"] > 0 else
                 "below" if fin(d.get("ci_high")) and d["ci_high"] < 0 else "spans" for d in ds]
        ci_txt = [f"[{d['ci_low']:+.1f}, {d['ci_high']:+.1f}]" if fin(d.get("ci_low")) and fin(d.get("ci_high"))
                  else "none (too few targets)" for d in ds]
        p_txt = [f"{d['p_wilcoxon']:.3f}" if fin(d.get("p_wilcoxon")) else "–" for d in ds]
        custom = [[c, f"{d.get('wins', 0)}/{d.get('ties', 0)}/{d.get('losses', 0)}", int(d.get("n", 0)), p]
                  for d, c, p in zip(ds, ci_txt, p_txt)]
        fig.add_trace(go.Scatter(
            x=means, y=labels, mode="markers", name=_safe_label(g), showlegend=False, customdata=custom,
            marker=dict(size=11, color=[_DIFF_COLORS[s] for s in state],
                        symbol=["circle" if s != "spans" else "circle-open" for s in state],
                        line=dict(width=2, color=[_DIFF_COLORS[s] for s in state])),
            error_x=dict(type="data", symmetric=False, array=[h - m for h, m in zip(hi, means)],
                         arrayminus=[m - lw for m, lw in zip(means, lo)], thickness=2, width=4, color="#444"),
            hovertemplate="%{y}<br>mean %{x:+.1f} points<br>95% CI %{customdata[0]}<br>W/T/L %{customdata[1]} "
                          "over %{customdata[2]} targets<br>Wilcoxon p %{customdata[3]}<extra>" + _safe_label(g)
                          + "</extra>"), row=i, col=1)
        fig.update_yaxes(categoryorder="array", categoryarray=labels, row=i, col=1, automargin=True)
        fig.add_vline(x=0, line=dict(color="#888", width=1, dash="dash"), row=i, col=1)
    span = max(hi_all) - min(lo_all) or 1.0
    rng = [min(lo_all) - 0.08 * span, max(hi_all) + 0.08 * span]
    fig.update_xaxes(range=rng, gridcolor="#eee", zeroline=False)
    fig.update_xaxes(title=dict(text="paired difference (points), 95% bootstrap CI over targets"),
                     row=len(regimes), col=1)
    fig.update_layout(title=dict(text=_safe_label(title)) if title else None, plot_bgcolor="white",
                      height=120 + 34 * sum(len(v) for v in per.values()) + 40 * len(regimes),
                      margin=dict(l=10, r=10, t=50 if title else 30, b=10))
    return fig


#: the three scores of a tuned model (:data:`pitune_core.study.robustness.MEASURES`' first three) and their colours
ROBUSTNESS_STYLE = {"in_distribution": ("in-distribution", "#1f77b4", "circle"),
                    "shifted": ("shifted", "#ff7f0e", "diamond"), "corrupted": ("corrupted", "#d62728", "square")}


def robustness_figure(regimes: Sequence[Mapping[str, Any]]) -> go.Figure:
    """Each approach's in-distribution, shifted and corrupted score (points: mean over targets, the
    error bar ± one std, ddof=1), one facet per regime, the three side by side per approach so the
    drop off the own test set reads as a step down. ``regimes``:
    :func:`pitune_core.study.robustness.robustness_table`'s; approaches without a score are left out."""
    regimes = [g for g in regimes if g.get("approaches")]
    if not regimes:
        fig = go.Figure()
        fig.add_annotation(text="no robustness measurement", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
        fig.update_layout(height=160, plot_bgcolor="white", xaxis=dict(visible=False), yaxis=dict(visible=False))
        return fig
    fig = make_subplots(rows=1, cols=len(regimes), shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=[_safe_label(g.get("regime", "")) for g in regimes])
    for i, g in enumerate(regimes, start=1):
        for j, (m, (name, color, symbol)) in enumerate(ROBUSTNESS_STYLE.items()):
            rows = [a for a in g["approaches"] if a[m]["n"] and math.isfinite(a[m]["mean"])]
            fig.add_trace(go.Scatter(
                x=[_safe_label(a["label"]) for a in rows], y=[a[m]["mean"] for a in rows], mode="markers",
                name=name, legendgroup=m, showlegend=i == 1, offsetgroup=m,
                marker=dict(size=10, color=color, symbol=symbol),
                error_y=dict(type="data", array=[a[m]["std"] if math.isfinite(a[m]["std"]) else 0 for a in rows],
                             thickness=1.5, width=3, color=color),
                customdata=[[a[m]["n"]] for a in rows],
                hovertemplate="%{x}<br>" + name + " %{y:.1f} points<br>over %{customdata[0]} targets<extra>"
                              + _safe_label(g.get("regime", "")) + "</extra>"), row=1, col=i)
        fig.update_xaxes(tickangle=-30, row=1, col=i)
    fig.update_yaxes(title=dict(text="score (points), mean ± std over targets"), gridcolor="#eee", row=1, col=1)
    fig.update_layout(scattermode="group", plot_bgcolor="white", height=420, legend=dict(orientation="h", y=1.12),
                      margin=dict(l=10, r=10, t=60, b=10))
    return fig


def robustness_diff_figure(regimes: Sequence[Mapping[str, Any]]) -> go.Figure:
    """The paired differences of the gaps (effective robustness, π-Tuning minus each approach) as
    :func:`paired_diff_figure`'s dot plot, one facet per regime and gap."""
    return paired_diff_figure([{**d, "regime": f"{d['regime']} · {MEASURE_LABELS[d['measure']]}"}
                               for g in regimes for d in g["diffs"] if d["measure"].endswith("_gap")])


# ----------------------------------------------------------------------------- predictor quality (ground truth)

#: column titles of the ground-truth quality metrics (``top{k}_hit`` titles are built from k)
METRIC_TITLES = {"spearman": "Spearman", "top1_hit": "top-1 hit", "ndcg3": "NDCG@3", "regret": "regret (pts)"}


def metric_title(m: str) -> str:
    if m in METRIC_TITLES:
        return METRIC_TITLES[m]
    return f"top-{m[3:-4]} hit" if m.startswith("top") and m.endswith("_hit") else m


def _num3(v: Any, nd: int = 2, sign: bool = False) -> str:
    if not isinstance(v, (int, float)) or not math.isfinite(v):
        return "–"
    return f"{v:+.{nd}f}" if sign else f"{v:.{nd}f}"


def _ci_text(ci: Any, nd: int = 2, sign: bool = False, pct: bool = False) -> str:
    lo, hi = (ci or (None, None))[:2]
    if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in (lo, hi)):
        return ""
    if pct:
        return f" ({100 * lo:.0f}–{100 * hi:.0f}%)"
    return f" [{_num3(lo, nd, sign)}, {_num3(hi, nd, sign)}]"


def metric_cell(s: Mapping[str, Any] | None, metric: str) -> str:
    """One summary cell: "mean [CI] · fraction of the ceiling (CI)" (regret: "· excess over the
    ceiling [CI]"); "–" for a number that is not defined (e.g. a CI from one target)."""
    if not s:
        return "–"
    nd = 2 if metric == "regret" else 3 if metric == "spearman" else 2
    out = _num3(s.get("mean"), nd) + _ci_text(s.get("ci"), nd)
    if "fraction_of_ceiling" in s:
        f = s.get("fraction_of_ceiling")
        out += " · " + (f"{100 * f:.0f}%" if isinstance(f, (int, float)) and math.isfinite(f)
                        else "–") + _ci_text(s.get("fraction_ci"), pct=True) + " of ceiling"
    elif "excess_over_ceiling" in s:
        out += f" · {_num3(s.get('excess_over_ceiling'), 2, sign=True)} over ceiling" + \
            _ci_text(s.get("excess_ci"), 2, sign=True)
    return out


#: the Target tab's column for :func:`pitune_core.predict.quality.within_group_spearman` (quality.json)
WITHIN_COL = "beyond modality (Spearman within it)"


def predictor_quality_rows(quality: Mapping[str, Any], size: str, selected: str | None = None,
                           target: str | None = None, ceiling_targets: int | None = None) -> list[dict]:
    """The Target tab's table at one target data size: a "noise ceiling" row (the split-half
    ceiling of every metric), then one row per predictor, best Spearman first: every metric as
    :func:`metric_cell`, cost per target (s), the paired Spearman difference to same-modality with
    its CI, the Spearman among the target's own-modality sources (what the predictor knows beyond
    modality; "–" where undefined), the predictor's Spearman on ``target`` and a mark on the
    ``selected`` embedding.

    ``quality`` is :meth:`pitune_core.study.read.reader.Study.groundtruth_quality` (validated);
    ``ceiling_targets``: how many targets the ceiling is taken over (reliability.json), if known. The
    ``targets`` column is text ("–" where not known), never a blank "None"."""
    metrics = list(quality.get("metrics") or [])
    preds = (quality.get("table") or {}).get(size) or {}
    ceil = (quality.get("reliability") or {}).get("mean") or {}
    tcol = f"Spearman on {target}" if target else None
    rows = []
    head = {"predictor": "noise ceiling", "targets": "–" if ceiling_targets is None else str(int(ceiling_targets))}
    for m in metrics:
        c = ceil.get("ceiling_spearman" if m == "spearman" else f"oracle_{m}")
        head[metric_title(m)] = _num3(c, 3 if m == "spearman" else 2)
    head.update({"s / target": "", "vs same-modality (Spearman diff)": "", WITHIN_COL: ""})
    if tcol:
        head[tcol] = ""
    head["sidebar"] = ""
    rows.append(head)

    def key(item):
        m = ((item[1].get("summary") or {}).get("spearman") or {}).get("mean")
        return (-(m if isinstance(m, (int, float)) and math.isfinite(m) else -math.inf), item[0])

    for p, v in sorted(preds.items(), key=key):
        n = v.get("n_targets")
        row: dict[str, Any] = {"predictor": p, "targets": "–" if n is None else str(int(n))}
        for m in metrics:
            row[metric_title(m)] = metric_cell((v.get("summary") or {}).get(m), m)
        secs = v.get("seconds_per_target")
        row["s / target"] = _num3(secs, 1)
        vs = v.get("vs_same_modality")
        row["vs same-modality (Spearman diff)"] = "—" if p == "same_modality" or not vs else (
            _num3(vs.get("mean_difference"), 3, sign=True) + _ci_text(vs.get("ci"), 3, sign=True))
        wm = v.get("within_modality") or {}
        row[WITHIN_COL] = "–" if wm.get("mean") is None else (
            _num3(wm["mean"], 3, sign=True) + _ci_text(wm.get("ci"), 3, sign=True))
        if tcol:
            row[tcol] = _num3(((v.get("per_target") or {}).get(target) or {}).get("spearman"), 3)
        row["sidebar"] = "◀ selected" if p == selected else ""
        rows.append(row)
    return rows


def predictor_quality_figure(quality: Mapping[str, Any], size: str, metric: str = "spearman",
                             selected: str | None = None, height: int | None = None) -> go.Figure:
    """One metric of every predictor at target data ``size``: a dot with its bootstrap 95% CI per
    predictor (best on top), the noise ceiling as a dashed line; the ``selected`` one in red."""
    preds = (quality.get("table") or {}).get(size) or {}

    def fin(x) -> bool:
        return isinstance(x, (int, float)) and math.isfinite(x)

    items = [(p, (v.get("summary") or {}).get(metric) or {}) for p, v in preds.items()]
    items = [(p, s) for p, s in items if fin(s.get("mean"))]
    items.sort(key=lambda ps: (ps[1]["mean"] if metric != "regret" else -ps[1]["mean"], ps[0]))
    fig = go.Figure()
    if items:
        names = [_safe_label(p) for p, _ in items]
        means = [float(s["mean"]) for _, s in items]
        lo = [float(s["ci"][0]) if s.get("ci") and fin(s["ci"][0]) else m for (_, s), m in zip(items, means)]
        hi = [float(s["ci"][1]) if s.get("ci") and fin(s["ci"][1]) else m for (_, s), m in zip(items, means)]
        colors = ["#d62728" if p == selected else "#1f77b4" for p, _ in items]
        fig.add_trace(go.Scatter(
            x=means, y=names, mode="markers", marker=dict(size=10, color=colors), showlegend=False,
            error_x=dict(type="data", symmetric=False, array=[h - m for h, m in zip(hi, means)],
                         arrayminus=[m - lw for m, lw in zip(means, lo)], thickness=2, width=4, color="#444"),
            hovertemplate="%{y}: %{x:.3f}<extra></extra>"))
        ceil = ((quality.get("reliability") or {}).get("mean") or {}).get(
            "ceiling_spearman" if metric == "spearman" else f"oracle_{metric}")
        if fin(ceil):
            fig.add_vline(x=float(ceil), line=dict(color="#888", dash="dash"),
                          annotation_text="noise ceiling", annotation_position="top")
        fig.update_yaxes(categoryorder="array", categoryarray=names, automargin=True)
    else:
        fig.add_annotation(text="no predictor has a defined mean at this size", showarrow=False,
                           x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_layout(height=height or max(220, 34 * max(1, len(items)) + 90), plot_bgcolor="white",
                      margin=dict(l=10, r=10, t=30, b=40),
                      xaxis=dict(title=dict(text=f"{_safe_label(metric_title(metric))}, mean over targets "
                                                 f"(95% bootstrap CI)"), gridcolor="#eee"))
    return fig
