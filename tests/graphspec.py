"""Reading :func:`dashboard.figures.graph_figure`'s Vega-Lite spec in tests: its layers by name."""

from __future__ import annotations

from typing import Any


def layer(spec: dict, name: str) -> dict:
    """The layer called ``name`` (AssertionError naming the layers there are, if none)."""
    found = [ly for ly in spec["layer"] if ly.get("name") == name]
    assert len(found) == 1, f"{len(found)} layers named {name!r}; layers: {[ly.get('name') for ly in spec['layer']]}"
    return found[0]


def has(spec: dict, name: str) -> bool:
    return any(ly.get("name") == name for ly in spec["layer"])


def rows(spec: dict, name: str) -> list[dict[str, Any]]:
    return layer(spec, name)["data"]["values"]


def nodes(spec: dict) -> list[str]:
    """Every task drawn: the ordinary nodes and the target's star."""
    out = [r["name"] for r in rows(spec, "tasks")]
    return out + ([r["name"] for r in rows(spec, "target")] if has(spec, "target") else [])


def labels(spec: dict) -> list[dict[str, Any]]:
    """Every label drawn, each with the mark's align / baseline (where it sits beside its node)."""
    out = []
    for ly in spec["layer"]:
        if ly["mark"]["type"] == "text" and ly.get("name") != "community labels":
            out += [{**r, "align": ly["mark"]["align"], "baseline": ly["mark"]["baseline"]}
                    for r in ly["data"]["values"]]
    return out


def side(spec: dict, name: str) -> str:
    """Where ``name``'s label sits, as :func:`dashboard.figures.label_positions` names it."""
    ly = next(lb for lb in labels(spec) if lb["label"] == name)
    return {("center", "bottom"): "top center", ("center", "top"): "bottom center",
            ("right", "middle"): "middle left", ("left", "middle"): "middle right"}[(ly["align"], ly["baseline"])]


def tight_cluster(n: int, seed: int = 0):
    """A graph of ``n`` tasks with long names spread over [-1, 1]^2, six of them (the returned
    ``cluster``) within ~1 % of the layout, as a target, its sources and a search match sit on a hub.
    Returns (graph, positions, cluster)."""
    import networkx as nx
    import numpy as np

    rng = np.random.default_rng(seed)
    names = [f"task_{i:04d}_long_name" for i in range(n)]
    G = nx.Graph()
    for i, name in enumerate(names):
        G.add_node(name, modality="language" if i % 2 else "vision", accuracy=0.8, community=i % 3)
    pos = {name: tuple(rng.uniform(-1, 1, 2)) for name in names}
    cluster = names[:6]
    for j, name in enumerate(cluster):
        pos[name] = (0.3 + 0.004 * (j % 3), -0.2 + 0.005 * (j // 3))
    return G, pos, cluster
