"""dashboard.figures: pure figure builders (plotly figures, and the task graph's Vega-Lite spec)."""

from __future__ import annotations

import json

import networkx as nx
import numpy as np
import plotly.graph_objects as go
import pytest

import graphspec as GS
from dashboard import figures as F
from pitune_core.predict.graph import annotate_communities, build_graph, detect_communities

NAMES = ["a_lang", "b_lang", "c_vis", "d_vis", "e_vl", "f_vl"]
MODS = {"a_lang": "language", "b_lang": "language", "c_vis": "vision", "d_vis": "vision",
        "e_vl": "vision-language", "f_vl": "vision-language"}


def _sim() -> np.ndarray:
    S = np.full((6, 6), 0.2)
    for i in range(6):
        for j in range(6):
            if MODS[NAMES[i]] == MODS[NAMES[j]]:
                S[i, j] = 0.8
    S[1, 2] = S[2, 1] = 0.5
    np.fill_diagonal(S, 1.0)
    return S


@pytest.fixture
def graph() -> nx.Graph:
    attrs = {n: {"modality": MODS[n], "accuracy": 0.3 + 0.1 * i, "description": f"task {n}"}
             for i, n in enumerate(NAMES)}
    G = build_graph(NAMES, _sim(), attrs, mode="knn", k=1)
    annotate_communities(G, detect_communities(G, method="greedy"))
    return G


def test_graph_figure(graph):
    spec = F.graph_figure(graph, target="c_vis", sources=["d_vis", "b_lang"])
    assert sorted(GS.nodes(spec)) == sorted(NAMES)  # every task once
    star = GS.rows(spec, "target")
    assert [r["name"] for r in star] == ["c_vis"] and GS.layer(spec, "target")["mark"]["shape"] == F.STAR
    assert "c_vis" not in [r["name"] for r in GS.rows(spec, "tasks")]
    # fill colour = modality, through one scale whose legend names the modalities
    fill = GS.layer(spec, "tasks")["encoding"]["fill"]
    assert dict(zip(fill["scale"]["domain"], fill["scale"]["range"])) == F.MODALITY_COLORS
    assert star[0]["fill"] == F.MODALITY_COLORS["vision"]
    # dashed target → source lines: one per source, from the target
    dashed = GS.layer(spec, "target → top-k sources")
    assert dashed["mark"]["strokeDash"] and len(dashed["data"]["values"]) == 2
    assert {(r["x"], r["y"]) for r in dashed["data"]["values"]} == {(star[0]["x"], star[0]["y"])}
    # every edge drawn once, its similarity on hover
    edges = GS.rows(spec, "edges")
    assert len(edges) == graph.number_of_edges()
    assert any(e["similarity"] == 0.8 for e in edges)
    assert [t["field"] for t in GS.layer(spec, "edges")["encoding"]["tooltip"]] == ["pair", "similarity"]
    # one outline colour per community, named with the modalities it spans
    stroke = GS.layer(spec, "tasks")["encoding"]["stroke"]["scale"]
    n_comm = len({c for _, c in graph.nodes(data="community")})
    assert len(stroke["domain"]) == n_comm and all("tasks (" in d for d in stroke["domain"])
    # a click on a node selects its name; a small graph names every task, the target and its sources
    # in the focus type, the others smaller and grey
    pick = next(p for p in GS.layer(spec, "tasks")["params"] if p["name"] == F.PICK)
    assert pick["select"]["fields"] == ["name"]
    assert sorted(lb["label"] for lb in GS.labels(spec)) == sorted(NAMES)
    quiet = {r["label"] for ly in spec["layer"] if ly["mark"]["type"] == "text"
             and ly["mark"]["fontSize"] == F.OTHER_LABEL_SIZE for r in ly["data"]["values"]}
    assert quiet == set(NAMES) - {"b_lang", "c_vis", "d_vis"}
    json.loads(json.dumps(spec))  # JSON as it is


def test_graph_figure_sizes_follow_accuracy(graph):
    spec = F.graph_figure(graph)
    sizes = {r["name"]: r["size"] for r in GS.rows(spec, "tasks")}
    acc = {n: graph.nodes[n]["accuracy"] for n in NAMES}
    ordered = sorted(NAMES, key=acc.get)
    assert [sizes[n] for n in ordered] == sorted(sizes.values())
    assert sizes[ordered[-1]] == F._node_size(acc[ordered[-1]]) ** 2  # Vega's size is an area
    assert F._node_size(None) == 14.0 and F._node_size(1.0) == 40.0


def test_graph_figure_rings_the_users_tasks(graph):
    spec = F.graph_figure(graph, target="c_vis", rings=["a_lang", "not_drawn"])
    ring = GS.layer(spec, "your tasks")
    assert [r["name"] for r in ring["data"]["values"]] == ["your task: a_lang"]
    assert ring["encoding"]["stroke"]["scale"] == {"domain": ["your task"], "range": [F.USER_COLOR]}
    assert ring["mark"]["filled"] is False
    assert not GS.has(F.graph_figure(graph), "your tasks")


def test_graph_positions_deterministic(graph):
    """The same graph gets the same layout in another process (not only twice in this one)."""
    import json
    import subprocess
    import sys

    here = F.graph_positions(graph, seed=0)
    code = ("import json, sys, networkx as nx; from dashboard import figures as F; "
            "G = nx.node_link_graph(json.loads(sys.stdin.read()), edges='links'); "
            "print(json.dumps(F.graph_positions(G, seed=0)))")
    data = json.dumps(nx.node_link_data(graph, edges="links"))
    res = subprocess.run([sys.executable, "-c", code], input=data, capture_output=True, text=True, check=True,
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parent.parent))
    there = {k: tuple(v) for k, v in json.loads(res.stdout).items()}
    assert there == here
    assert F.graph_positions(nx.Graph()) == {}


def test_layout_figure():
    coords = np.arange(12, dtype=float).reshape(6, 2)
    attrs = {n: {"modality": MODS[n], "accuracy": 0.5} for n in NAMES}
    fig = F.layout_figure(NAMES, coords, attrs, {n: i % 2 for i, n in enumerate(NAMES)}, target="e_vl")
    pts = {n: (x, y) for t in fig.data for n, x, y in zip(t.customdata, t.x, t.y)}
    assert pts == {n: (coords[i, 0], coords[i, 1]) for i, n in enumerate(NAMES)}
    assert [t.name for t in fig.data if t.marker.symbol == "star"] == ["target: e_vl"]


def test_order_tasks_and_heatmap():
    S = _sim()
    comm = {"a_lang": 1, "b_lang": 1, "c_vis": 0, "d_vis": 0, "e_vl": 2, "f_vl": 2}
    order = F.order_tasks(NAMES, "community", comm, MODS)
    assert order == ["c_vis", "d_vis", "a_lang", "b_lang", "e_vl", "f_vl"]
    assert F.order_tasks(NAMES, "modality", modalities=MODS) == NAMES
    assert F.order_tasks(list(reversed(NAMES)), "name") == NAMES
    clustered = F.order_tasks(NAMES, "cluster", sim=S)
    assert sorted(clustered) == NAMES
    for a, b in (("a_lang", "b_lang"), ("c_vis", "d_vis"), ("e_vl", "f_vl")):  # same-modality pairs cluster
        assert abs(clustered.index(a) - clustered.index(b)) == 1
    with pytest.raises(ValueError):
        F.order_tasks(NAMES, "cluster")
    with pytest.raises(ValueError):
        F.order_tasks(NAMES, "colour")
    fig = F.heatmap_figure(NAMES, S, order, comm)
    hm = fig.data[0]
    assert list(hm.x) == order and list(hm.y) == order
    assert all(hm.z[i][i] is None for i in range(6))  # diagonal blanked
    assert hm.z[0][1] == pytest.approx(0.8)  # c_vis vs d_vis
    assert len(fig.layout.shapes) == 3  # one outline per community block
    assert len(F.heatmap_figure(NAMES, S).layout.shapes) == 0


def test_topk_figure():
    sources = [{"name": "x", "similarity": 0.9, "modality": "vision", "gain": 3.0},
               {"name": "y", "similarity": 0.7, "modality": "language", "gain": None},
               {"name": "z", "similarity": 0.6, "modality": "vision-language", "gain": -1.5}]
    fig = F.topk_figure(sources, "t")
    sim_bar, gain_bar = fig.data
    assert list(sim_bar.y) == ["x", "y", "z"] and list(sim_bar.x) == [0.9, 0.7, 0.6]
    assert list(gain_bar.text) == ["+3.0", "not measured", "-1.5"]
    assert gain_bar.marker.color[0] != gain_bar.marker.color[2]  # gains and losses differ in colour
    fig = F.topk_figure([{**s, "gain": None} for s in sources], "t")
    assert "not in the transfer matrix" in fig.layout.xaxis2.title.text


def test_weights_figures():
    fig = F.weights_bar_figure(["a", "b"], [0.25, 0.75])
    assert list(fig.data[0].x) == [0.25, 0.75]
    history = [{"step": 0, "weights": [0.5, 0.5]}, {"step": 5, "weights": [0.6, 0.4], "loss": 1.0},
               {"step": 10, "weights": [0.7, 0.3], "loss": 0.5}]
    fig = F.weights_history_figure(history, ["a", "b"])
    lines = {t.name: t for t in fig.data}
    assert list(lines["a"].y) == [0.5, 0.6, 0.7] and list(lines["b"].x) == [0, 5, 10]
    assert list(lines["training loss"].y) == [1.0, 0.5]
    # issue 32 point 10: no SI prefix on the loss axis (a tiny loss read "2.737µ"), legend below the plot
    assert fig.layout.yaxis2.tickformat == ".3~g" and fig.layout.yaxis2.exponentformat in (None, "e", "power", "none")
    assert fig.layout.legend.orientation == "h" and fig.layout.legend.y < 0


def test_target_evidence_figure():
    approaches = [{"label": "π-Tuning", "scores": [0.6, 0.7], "mean": 0.65, "std": 0.0707},
                  {"label": "target-only", "scores": [0.5], "mean": 0.5, "std": float("nan")}]
    runs = [{"label": "run abc", "score": 0.45, "flagged": True}, {"label": "run def", "score": None}]
    fig = F.target_evidence_figure(approaches, runs, {"zero-shot": 0.4, "target-only": 0.5})
    means = next(t for t in fig.data if t.name and t.name.startswith("study: mean"))
    assert list(means.x) == ["π-Tuning", "target-only"] and list(means.y) == pytest.approx([0.65, 0.5])
    assert list(means.error_y.array) == pytest.approx([0.0707, 0.0])  # one seed: no spread drawn
    mine = next(t for t in fig.data if t.name and t.name.startswith("your runs"))
    assert list(mine.x) == ["run abc"]  # runs without a score are left out
    assert sorted(s.y0 for s in fig.layout.shapes) == pytest.approx([0.4, 0.5])
    json.loads(fig.to_json())


def test_predictor_rows_show_the_within_modality_spearman():
    q = {"metrics": ["spearman"], "reliability": {"mean": {"ceiling_spearman": 0.8}},
         "table": {"4-shot": {
             "data": {"n_targets": 16, "summary": {"spearman": {"mean": 0.3, "ci": (0.1, 0.5)}},
                      "within_modality": {"mean": 0.323, "ci": (0.092, 0.564), "n_targets": 16}},
             "same_modality": {"n_targets": 16, "summary": {"spearman": {"mean": 0.35, "ci": (0.2, 0.5)}},
                               "within_modality": None}}}}
    rows = {r["predictor"]: r for r in F.predictor_quality_rows(q, "4-shot")}
    assert rows["data"][F.WITHIN_COL] == "+0.323 [+0.092, +0.564]"
    assert rows["same_modality"][F.WITHIN_COL] == "–" and rows["noise ceiling"][F.WITHIN_COL] == ""


def test_close_labels_are_drawn_apart():
    # two labelled nodes almost on top of each other, one far away: the close pair face away from
    # each other (vertically, then horizontally), the loner keeps the default
    pos = {"t": (0.0, 0.0), "above": (0.01, 0.05), "right": (0.06, 0.0), "far": (1.0, 1.0), "west": (-1.0, -1.0)}
    assert F.label_positions(pos, ["t", "above"]) == {"t": "bottom center", "above": "top center"}
    assert F.label_positions(pos, ["t", "right"]) == {"t": "middle left", "right": "middle right"}
    assert F.label_positions(pos, ["far"]) == {}  # nothing to avoid: the figure's own position stands
    # near the right edge a label does not go further right (it would be clipped)
    edge = {"l": (0.0, 0.0), "a": (0.9, 0.5), "b": (0.97, 0.5)}
    assert F.label_positions(edge, ["a", "b"]) == {"a": "middle left", "b": "top center"}
    # distances are per axis span: a layout twice as tall as wide does not flip the decision
    tall = {"t": (0.0, 0.0), "n": (0.1, 0.1), "corner": (1.0, 2.0), "west": (-1.0, -2.0)}
    assert F.label_positions(tall, ["t", "n"])["t"] == "middle left"


def _label_boxes(spec: dict, width: float = F.LABEL_WIDTH_PX) -> dict[str, tuple]:
    """Each label's box in plot pixels, from the spec alone (its anchor, align / baseline, dx / dy,
    font size and text), with the text size :func:`dashboard.figures.place_labels` assumes."""
    (x0, x1), (y0, y1) = (spec["encoding"][a]["scale"]["domain"] for a in ("x", "y"))
    out = {}
    for ly in spec["layer"]:
        m = ly["mark"]
        if m["type"] != "text" or ly.get("name") == "community labels":
            continue
        for r in ly["data"]["values"]:
            w, h = F._text_size({"label": r["label"], "size": m["fontSize"], "weight": m["fontWeight"]})
            ax = (r["x"] - x0) / (x1 - x0) * width + m["dx"]
            ay = (y1 - r["y"]) / (y1 - y0) * spec["height"] + m["dy"]
            left = ax - {"left": 0, "center": w / 2, "right": w}[m["align"]]
            top = ay - {"top": 0, "middle": h / 2, "bottom": h}[m["baseline"]]
            out[r["label"]] = (left, top, left + w, top + h)
    return out


@pytest.mark.parametrize("n", [40, 1200])
def test_labels_in_a_tight_cluster_do_not_overlap(n):
    """The target and its sources sit close together (they are similar, so the layout puts them
    together): on a hub, several are within a few pixels. Their labels are placed so that no two
    boxes overlap and each stays inside the plot, where before each label only faced away from its
    one nearest labelled neighbour and a cluster of three piled them up."""
    G, pos, cluster = GS.tight_cluster(n)  # the target, four sources and a search match, within ~1 % of the span
    spec = F.graph_figure(G, pos=pos, target=cluster[0], sources=cluster[1:5], highlight=cluster[5:])
    boxes = _label_boxes(spec)
    assert set(boxes) == (set(G) if n <= F.NAME_ALL_N else set(cluster))  # a small graph names every task
    for a in cluster:
        x0, y0, x1, y1 = boxes[a]
        assert 0 <= x0 and x1 <= F.LABEL_WIDTH_PX and 0 <= y0 and y1 <= spec["height"], (a, boxes[a])
        for b in cluster:
            if a < b:
                p, q = boxes[a], boxes[b]
                assert not (p[0] < q[2] and q[0] < p[2] and p[1] < q[3] and q[1] < p[3]), (a, b, p, q)
    if GS.has(spec, "community labels"):  # on a hub, nor over a community bubble's label
        ly = GS.layer(spec, "community labels")
        (x0, x1), (y0, y1) = (spec["encoding"][ax]["scale"]["domain"] for ax in ("x", "y"))
        for r in ly["data"]["values"]:
            w, h = F._text_size({"label": r["label"], "size": ly["mark"]["fontSize"]})
            cx, cy = (r["x"] - x0) / (x1 - x0) * F.LABEL_WIDTH_PX, (y1 - r["y"]) / (y1 - y0) * spec["height"]
            for a, p in boxes.items():
                assert not (p[0] < cx + w / 2 and cx - w / 2 < p[2] and p[1] < cy + h / 2 and cy - h / 2 < p[3]), \
                    (a, r["label"])
    # and the check can fail: each label on the side facing away from its nearest labelled neighbour,
    # the placement before, piles them up
    sides = F.label_positions(pos, cluster)
    old = {**spec, "layer": F._label_layers([
        {"x": round(pos[c][0], 5), "y": round(pos[c][1], 5), "label": c, "side": sides[c], "color": "#111",
         "size": 12, **dict(zip(("dx", "dy"), F._label_offset(sides[c], 3.0, 0, 15.0)))} for c in cluster])}
    before = _label_boxes(old)
    assert any(p[0] < q[2] and q[0] < p[2] and p[1] < q[3] and q[1] < p[3]
               for a, p in before.items() for b, q in before.items() if a < b)


@pytest.mark.parametrize("n", [40, 1200])
def test_map_labels_in_a_tight_cluster_are_placed_apart(n):
    """The map (plotly) places its labels with the graph's place_labels: in a tight cluster they go
    to different places, pushed out where needed, instead of all on one side of their nodes."""
    G, pos, cluster = GS.tight_cluster(n)
    names = list(pos)
    coords = np.array([pos[x] for x in names])
    attrs = {x: {"modality": G.nodes[x]["modality"], "accuracy": 0.8} for x in names}
    fig = F.layout_figure(names, coords, attrs, {x: G.nodes[x]["community"] for x in names}, target=cluster[0],
                          sources=cluster[1:5], highlight=cluster[5:])
    notes = {a.text: a for a in fig.layout.annotations}
    assert set(notes) == set(cluster)
    places = {(a.xanchor, a.yanchor, a.xshift, a.yshift) for a in notes.values()}
    assert len(places) == len(cluster)  # six labels, six different places


def test_graph_and_map_place_the_target_label_away_from_its_sources(graph):
    pos = {n: (float(i), 0.0) for i, n in enumerate(NAMES)}
    pos["d_vis"] = (2.0, 0.3)  # right above the target c_vis
    pos["a_lang"] = (0.0, -1.0)  # the layout has some height, so the star is not at the plot's bottom edge
    spec = F.graph_figure(graph, pos=pos, target="c_vis", sources=["d_vis"])
    assert GS.side(spec, "c_vis") == "bottom center"
    assert GS.side(spec, "d_vis") == "top center"
    alone = F.graph_figure(graph, pos=pos, target="c_vis")  # no sources: the star's label below it
    assert GS.side(alone, "c_vis") == "bottom center"
    coords = np.array([pos[n] for n in NAMES])
    attrs = {n: {"modality": MODS[n]} for n in NAMES}
    fig = F.layout_figure(NAMES, coords, attrs, target="c_vis", sources=["d_vis"])
    notes = {a.text: a for a in fig.layout.annotations}
    assert set(notes) == {"c_vis", "d_vis"}  # the map's labels: the target and its sources only
    assert (notes["c_vis"].xanchor, notes["c_vis"].yanchor) == ("center", "top")  # below the star
    assert (notes["d_vis"].xanchor, notes["d_vis"].yanchor) == ("center", "bottom")  # above its node
    assert notes["c_vis"].yshift < 0 < notes["d_vis"].yshift and notes["c_vis"].showarrow is False


def test_graph_figure_is_valid_vega_lite(graph):
    """Small and large graphs, with a target, sources, matches and rings, against the Vega-Lite JSON
    schema (the one altair ships; Streamlit draws the spec with Vega-Lite 6)."""
    alt = pytest.importorskip("altair")
    from altair.utils.schemapi import validate_jsonschema
    from jsonschema import ValidationError

    schema = alt.vegalite.v6.schema.core.load_schema()
    validate_jsonschema(F.graph_figure(graph, target="c_vis", sources=["d_vis"], highlight=["a_lang"],
                                       rings=["e_vl"]), schema)
    big = nx.Graph()
    for i in range(F.LARGE_N + 20):
        big.add_node(f"t{i}", modality="vision", community=i % 5)
        if i:
            big.add_edge(f"t{i}", f"t{i - 1}", weight=0.5 + (i % 7) / 20)
    spec = F.graph_figure(big, target="t0", sources=["t1", "t2"], rings=["t3"])
    validate_jsonschema(spec, schema)
    assert spec["usermeta"]["embedOptions"]["renderer"] == "canvas"
    with pytest.raises(ValidationError):  # the check can fail
        validate_jsonschema({**spec, "layer": [{**spec["layer"][0], "mark": {"type": "no such mark"}}]}, schema)


def test_graph_legend_shows_task_families_and_the_tooltip_says_who_is_not_offered(graph):
    from graphspec import layer

    G = graph.copy()
    for i, n in enumerate(G.nodes):
        G.nodes[n]["family"] = ("digits", "sentiment")[i % 2]
    gated = next(iter(G.nodes))
    G.nodes[gated]["gated"] = "not offered as a source: it did not learn its task (accuracy on val 50.3 ...)"
    spec = F.graph_figure(G)
    enc = layer(spec, "tasks")["encoding"]
    assert enc["shape"]["field"] == "family" and enc["shape"]["scale"]["domain"] == ["digits", "sentiment"]
    assert {"field": "family", "title": "family"} in enc["tooltip"]
    by_name = {r["name"]: r for r in layer(spec, "tasks")["data"]["values"]}
    assert by_name[gated]["source"].startswith("not offered as a source: it did not learn")
    assert all(r["source"] == "offered" for n, r in by_name.items() if n != gated)
    # a graph without families (an older study) draws no family legend
    assert "shape" not in layer(F.graph_figure(graph), "tasks")["encoding"]


def _overlaps(boxes: dict) -> list[tuple]:
    items = sorted(boxes.items())
    return [(a, b) for i, (a, p) in enumerate(items) for b, q in items[i + 1:]
            if p[0] < q[2] and q[0] < p[2] and p[1] < q[3] and q[1] < p[3]]


@pytest.mark.parametrize("n", [16, 24, 60])
def test_a_small_studys_graph_names_every_task_without_overlap(n):
    """Issue 32, point 11: on a study of up to NAME_ALL_N tasks every node carries its name (before:
    only the target and its sources, 4 of 16), each label placed clear of every other label; above
    that, only the focus is named."""
    rng = np.random.default_rng(n)
    names = [f"{w}_{i:02d}" for i, w in zip(range(n), rng.choice(["movie_sentiment", "tux_caption_match",
                                                                   "mnist", "emoji_group_question", "bbc_topic"], n))]
    S = rng.uniform(0.1, 0.9, (n, n))
    S = (S + S.T) / 2
    np.fill_diagonal(S, 1.0)
    attrs = {t: {"modality": ["language", "vision", "vision-language"][i % 3], "accuracy": 0.7} for i, t in enumerate(names)}
    G = build_graph(names, S, attrs, mode="knn", k=3)
    annotate_communities(G, detect_communities(G, method="greedy"))
    spec = F.graph_figure(G, target=names[0], sources=names[1:4])
    boxes = _label_boxes(spec)
    assert set(boxes) == set(names)
    assert _overlaps(boxes) == []
    big = [f"t{i:03d}" for i in range(F.NAME_ALL_N + 1)]
    S = rng.uniform(0.1, 0.9, (len(big), len(big)))
    S = (S + S.T) / 2
    np.fill_diagonal(S, 1.0)
    G = build_graph(big, S, {t: {"modality": "language", "accuracy": 0.7} for t in big}, mode="knn", k=3)
    annotate_communities(G, detect_communities(G, method="greedy"))
    assert set(_label_boxes(F.graph_figure(G, target=big[0], sources=big[1:4]))) == set(big[:4])
