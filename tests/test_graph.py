import json
import warnings

import networkx as nx
import numpy as np
import pytest

from pitune_core.predict.graph import (
    annotate_communities,
    build_graph,
    community_summary,
    detect_communities,
    graph_from_json,
    graph_to_json,
    read_graph_json,
    write_graph_json,
)
from pitune_core.predict.similarity import CorruptFileError, UnknownTaskError

# Two task families: text classification (+ one vision-language task that behaves like them)
# and vision tasks. Within-family similarity 0.8-0.9, across 0.1-0.2.
NAMES = ["sst2", "mnli", "qnli", "vqa", "cifar", "svhn", "coco"]
MODALITY = {"sst2": "text", "mnli": "text", "qnli": "text", "vqa": "vision-language",
            "cifar": "vision", "svhn": "vision", "coco": "vision"}


@pytest.fixture
def two_families():
    rng = np.random.default_rng(0)
    family = np.array([0, 0, 0, 0, 1, 1, 1])
    same = family[:, None] == family[None, :]
    noise = rng.uniform(0, 0.1, size=(7, 7))
    sim = np.where(same, 0.8, 0.1) + (noise + noise.T) / 2
    np.fill_diagonal(sim, 1.0)
    attrs = {name: {"modality": MODALITY[name], "accuracy": 0.5 + i / 20} for i, name in enumerate(NAMES)}
    return sim, attrs


def test_knn_graph_links_each_task_to_its_top_k(two_families):
    sim, attrs = two_families
    G = build_graph(NAMES, sim, attrs, mode="knn", k=2)
    assert list(G.nodes) == NAMES
    assert G.nodes["vqa"] == {"modality": "vision-language", "accuracy": 0.65}
    for i, name in enumerate(NAMES):
        best_two = sorted((j for j in range(7) if j != i), key=lambda j: -sim[i, j])[:2]
        for j in best_two:
            assert G[name][NAMES[j]]["weight"] == sim[i, j]
        assert G.degree(name) >= 2  # union of top-k lists: can be more than k
    assert G.number_of_edges() <= 7 * 2


def test_threshold_graph_has_exactly_the_pairs_above_threshold(two_families):
    sim, _ = two_families
    G = build_graph(NAMES, sim, mode="threshold", threshold=0.5)
    expected = {frozenset((NAMES[i], NAMES[j])) for i in range(7) for j in range(i + 1, 7) if sim[i, j] >= 0.5}
    assert {frozenset(e) for e in G.edges} == expected
    assert len(expected) == 6 + 3  # 4-clique + triangle


def test_build_graph_validates_k_mode_and_attribute_names(two_families):
    sim, attrs = two_families
    with pytest.raises(ValueError, match="the maximum is 6"):
        build_graph(NAMES, sim, k=7)
    with pytest.raises(ValueError, match="mode must be 'knn' or 'threshold'"):
        build_graph(NAMES, sim, mode="mst")
    with pytest.raises(UnknownTaskError, match="did you mean 'cifar'"):
        build_graph(NAMES, sim, {"cifar10": {"modality": "vision"}})


@pytest.mark.parametrize("method", ["louvain", "greedy"])
def test_communities_recover_the_two_families(two_families, method):
    sim, attrs = two_families
    G = build_graph(NAMES, sim, attrs, mode="knn", k=2)
    communities = detect_communities(G, method=method, seed=0)
    assert communities == [{"cifar", "svhn", "coco"}, {"sst2", "mnli", "qnli", "vqa"}]  # by smallest name
    assert detect_communities(G, method=method, seed=0) == communities  # reproducible


def test_isolated_tasks_are_singleton_communities_ordered_by_name():
    sim = np.eye(3)
    G = build_graph(["b", "c", "a"], sim, mode="threshold", threshold=0.5)
    assert detect_communities(G, method="greedy") == [{"a"}, {"b"}, {"c"}]
    assert detect_communities(nx.Graph()) == []


def test_negative_weights_are_rejected_with_advice():
    sim = np.array([[1.0, -0.5, 0.2], [-0.5, 1.0, 0.1], [0.2, 0.1, 1.0]])
    G = build_graph(["a", "b", "c"], sim, k=2)
    with pytest.raises(ValueError, match="negative weight"):
        detect_communities(G)


def test_community_summary_flags_cross_modal_communities(two_families):
    sim, attrs = two_families
    G = build_graph(NAMES, sim, attrs, k=2)
    annotate_communities(G, detect_communities(G))
    assert G.nodes["vqa"]["community"] == G.nodes["sst2"]["community"] == 1
    assert G.nodes["coco"]["community"] == 0
    summary = community_summary(G)
    assert summary[1] == {
        "community": 1,
        "size": 4,
        "members": ["mnli", "qnli", "sst2", "vqa"],
        "modalities": ["text", "vision-language"],
        "modality_counts": {"text": 3, "vision-language": 1},
        "cross_modal": True,
    }
    assert summary[0]["modalities"] == ["vision"] and summary[0]["cross_modal"] is False


def test_annotate_communities_requires_a_partition(two_families):
    sim, _ = two_families
    G = build_graph(NAMES, sim)
    with pytest.raises(ValueError, match="in no community"):
        annotate_communities(G, [{"sst2", "mnli"}])
    with pytest.raises(ValueError, match="must not overlap"):
        annotate_communities(G, [set(NAMES), {"sst2"}])
    with pytest.raises(ValueError, match="call annotate_communities first"):
        community_summary(G)


def test_graph_json_round_trip_without_warnings(tmp_path, two_families):
    sim, attrs = two_families
    attrs["sst2"]["accuracy"] = np.float32(0.75)  # numpy scalars are written as plain numbers
    G = build_graph(NAMES, sim, attrs, k=2)
    annotate_communities(G, detect_communities(G))
    path = tmp_path / "graph.json"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. networkx's FutureWarning about edges=/links=
        write_graph_json(path, G)
        H = read_graph_json(path)
        assert graph_from_json(graph_to_json(G)).graph == G.graph
    assert "edges" in json.loads(path.read_text())
    assert list(H.nodes) == NAMES
    assert dict(H.nodes(data=True))["sst2"] == {"modality": "text", "accuracy": 0.75, "community": 1}
    assert {frozenset(e) for e in H.edges} == {frozenset(e) for e in G.edges}
    assert all(H[u][v]["weight"] == w for u, v, w in G.edges(data="weight"))
    assert H.graph == {"mode": "knn", "k": 2}


def test_graph_from_json_reads_legacy_links_key():
    data = {"directed": False, "multigraph": False, "graph": {}, "nodes": [{"id": "a"}, {"id": "b"}],
            "links": [{"source": "a", "target": "b", "weight": 0.7}]}
    G = graph_from_json(data)
    assert G["a"]["b"]["weight"] == 0.7


@pytest.mark.parametrize("text, message", [("{not json", "not valid JSON"), ('{"nodes": []}', "no 'edges'"),
                                           ('[1, 2]', "not a node-link graph")])
def test_read_graph_json_reports_corruption(tmp_path, text, message):
    path = tmp_path / "g.json"
    path.write_text(text)
    with pytest.raises(CorruptFileError, match=message):
        read_graph_json(path)



def test_communities_keep_their_numbers_when_a_user_task_is_placed():
    """Issue 32, point 11: a community's number (hence its outline colour) stays when a user task is
    placed into it. Two cliques, m* (4 tasks) and a* (3): placing a user task among the a* made the
    two the same size, and the size-first order renumbered (recoloured) both."""
    def cliques(extra: bool) -> nx.Graph:
        G = nx.Graph()
        groups = [["m1", "m2", "m3", "m4"], ["a1", "a2", "a3"] + (["zz_mine"] if extra else [])]
        for g in groups:
            for n in g:
                G.add_node(n, user_task=n == "zz_mine")
            G.add_weighted_edges_from((u, v, 0.9) for i, u in enumerate(g) for v in g[i + 1:])
        G.add_edge("m1", "a1", weight=0.05)
        return G

    before = detect_communities(cliques(False), method="greedy")
    after = detect_communities(cliques(True), method="greedy")
    assert [sorted(c - {"zz_mine"}) for c in after] == [sorted(c) for c in before]
    assert [sorted(c) for c in before] == [["a1", "a2", "a3"], ["m1", "m2", "m3", "m4"]]  # by smallest name
