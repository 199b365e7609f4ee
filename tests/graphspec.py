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
