"""Task graphs: tasks as nodes, similarities as weighted edges, communities as task families.

The graph is what users look at to see which tasks an expert could borrow from; communities
that span several modalities are the interesting finding, so :func:`community_summary`
reports them explicitly. All algorithms are networkx's own.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import networkx as nx
import numpy as np

from pitune_core.predict.similarity import CorruptFileError, UnknownTaskError, check_k, check_similarity
from pitune_core.spec.vocab import GRAPH_K


def build_graph(
    names: Sequence[str],
    sim: np.ndarray,
    node_attrs: Mapping[str, dict] | None = None,
    mode: str = "knn",
    k: int = GRAPH_K,
    threshold: float = 0.5,
) -> nx.Graph:
    """Undirected task graph with edge attribute ``weight`` = similarity.

    ``mode="knn"`` links every task to its ``k`` most similar tasks (union over tasks, so a
    node can have more than k edges; ties broken by name); ``mode="threshold"`` links every
    pair with similarity >= ``threshold``. ``node_attrs[name]`` (e.g. ``modality``,
    ``accuracy``) is copied onto the node. Nodes are added in ``names`` order, which makes
    community detection reproducible.
    """
    sim, names = check_similarity(sim, names)
    n = len(names)
    node_attrs = dict(node_attrs or {})
    unknown = [x for x in node_attrs if x not in set(names)]
    if unknown:
        raise UnknownTaskError(str(unknown[0]), names)
    G = nx.Graph(mode=mode)
    for name in names:
        G.add_node(name, **dict(node_attrs.get(name, {})))
    if mode == "knn":
        k = check_k(k, n)
        G.graph["k"] = k
        name_rank = np.argsort(np.argsort(names))  # ties broken by name, as in top_k
        for i in range(n):
            order = np.lexsort((name_rank, -sim[i]))  # last key is the primary one
            for j in order[order != i][:k].tolist():
                G.add_edge(names[i], names[j], weight=float(sim[i, j]))
    elif mode == "threshold":
        if not np.isfinite(threshold):
            raise ValueError(f"threshold must be a finite number, got {threshold}")
        G.graph["threshold"] = float(threshold)
        rows, cols = np.nonzero(np.triu(sim >= threshold, k=1))
        for i, j in zip(rows.tolist(), cols.tolist()):
            G.add_edge(names[i], names[j], weight=float(sim[i, j]))
    else:
        raise ValueError(f"mode must be 'knn' or 'threshold', got {mode!r}")
    return G


def _ordered(communities: Iterable[Iterable[str]], added: Iterable[str] = ()) -> list[set[str]]:
    """By each community's anchor, its smallest member name not among ``added`` (the user's own
    tasks placed on the study): stable across runs, and a community keeps its number, hence its
    colour, when a task is placed into it (ordering by size renumbered them)."""
    sets = [set(c) for c in communities]
    added = set(added)

    def anchor(c):
        names = sorted(map(str, c))
        kept = [n for n in names if n not in added]
        return (0, kept[0]) if kept else (1, names[0] if names else "")
    return sorted(sets, key=anchor)


def detect_communities(
    G: nx.Graph, method: str = "louvain", seed: int = 0, resolution: float = 1.0
) -> list[set[str]]:
    """Partition the tasks into communities with networkx (weighted by ``weight``).

    ``method`` is ``"louvain"`` (``louvain_communities``, randomised, hence ``seed``) or
    ``"greedy"`` (``greedy_modularity_communities``, deterministic). Returned in the order of their
    smallest task name, nodes marked ``user_task`` aside (:func:`_ordered`), so the numbering does not
    depend on the algorithm's order, nor change when a user task is placed into a community.
    """
    negative = [(u, v) for u, v, w in G.edges(data="weight", default=1.0) if w < 0]
    if negative:
        raise ValueError(
            f"{len(negative)} edge(s) have negative weight (e.g. {negative[0]}); modularity needs "
            "weights >= 0: use Fisher similarity or build the graph with mode='threshold' and "
            "threshold >= 0"
        )
    if G.number_of_nodes() == 0:
        return []
    if method == "louvain":
        found = nx.community.louvain_communities(G, weight="weight", resolution=resolution, seed=seed)
    elif method == "greedy":
        # weight must be named: greedy_modularity_communities ignores weights by default
        found = nx.community.greedy_modularity_communities(G, weight="weight", resolution=resolution)
    else:
        raise ValueError(f"method must be 'louvain' or 'greedy', got {method!r}")
    return _ordered(found, [n for n, u in G.nodes(data="user_task") if u])


def annotate_communities(G: nx.Graph, communities: Sequence[Iterable[str]]) -> None:
    """Set node attribute ``community`` (index into ``communities``) in place.

    ``communities`` must be a partition of the nodes: every node exactly once.
    """
    label: dict[Any, int] = {}
    for idx, members in enumerate(communities):
        for node in members:
            if node not in G:
                raise UnknownTaskError(str(node), [str(x) for x in G.nodes])
            if node in label:
                raise ValueError(f"task {node!r} is in communities {label[node]} and {idx}; they must not overlap")
            label[node] = idx
    missing = [x for x in G.nodes if x not in label]
    if missing:
        raise ValueError(f"tasks {missing[:10]} are in no community; pass a partition of all nodes")
    nx.set_node_attributes(G, label, "community")


def community_summary(G: nx.Graph) -> list[dict]:
    """One dict per community: ``community``, ``size``, ``members`` (sorted), ``modalities``
    (sorted distinct ``modality`` attributes), ``modality_counts`` and ``cross_modal`` (spans
    more than one modality). Nodes without a ``modality`` are counted as members only."""
    labels = dict(G.nodes(data="community"))
    unlabelled = [x for x, c in labels.items() if c is None]
    if unlabelled:
        raise ValueError(
            f"tasks {unlabelled[:10]} have no 'community' attribute; call annotate_communities first"
        )
    out = []
    for c in sorted(set(labels.values())):
        members = sorted((x for x, lab in labels.items() if lab == c), key=str)
        counts = Counter(G.nodes[x]["modality"] for x in members if G.nodes[x].get("modality") is not None)
        out.append(
            {
                "community": int(c),
                "size": len(members),
                "members": members,
                "modalities": sorted(counts, key=str),
                "modality_counts": dict(sorted(counts.items(), key=lambda kv: str(kv[0]))),
                "cross_modal": len(counts) > 1,
            }
        )
    return out


# --------------------------------------------------------------------------------------------
# JSON


def _plain(value: Any) -> Any:
    """Convert numpy scalars/arrays to JSON-native values (json.dump's ``default`` hook)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    raise TypeError(f"attribute value {value!r} of type {type(value).__name__} is not JSON serialisable")


def graph_to_json(G: nx.Graph) -> dict:
    """Node-link dict of ``G`` (networkx format, edges under key ``"edges"``)."""
    # edges= is explicit: networkx 3.4/3.5 warned (FutureWarning) when it defaulted to "links";
    # 3.6 defaults to "edges", so this is the same output on every version.
    return nx.node_link_data(G, edges="edges")


def graph_from_json(data: Mapping) -> nx.Graph:
    """Inverse of :func:`graph_to_json`; also reads older files that used the ``"links"`` key."""
    if not isinstance(data, Mapping) or "nodes" not in data:
        raise CorruptFileError("not a node-link graph: expected a JSON object with 'nodes' and 'edges'")
    key = "edges" if "edges" in data else "links" if "links" in data else None
    if key is None:
        raise CorruptFileError("node-link graph has no 'edges' (or legacy 'links') list")
    try:
        return nx.node_link_graph(dict(data), edges=key)
    except (KeyError, TypeError) as err:
        raise CorruptFileError(f"malformed node-link graph: missing or bad field {err}") from None


def write_graph_json(path: str | os.PathLike, G: nx.Graph) -> None:
    """Write :func:`graph_to_json` to ``path`` (numpy attribute values become plain JSON)."""
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(graph_to_json(G), fh, indent=1, default=_plain)


def read_graph_json(path: str | os.PathLike) -> nx.Graph:
    """Read a graph written by :func:`write_graph_json`; :class:`CorruptFileError` if broken."""
    with open(path, encoding="utf-8") as fh:
        try:
            data = json.load(fh)
        except json.JSONDecodeError as err:
            raise CorruptFileError(f"{os.fspath(path)}: not valid JSON ({err})") from None
    try:
        return graph_from_json(data)
    except CorruptFileError as err:
        raise CorruptFileError(f"{os.fspath(path)}: {err}") from None
