"""Hub scale: top-k neighbours vs the exact measure, the synthetic hub study, figures for many tasks.

Small sizes only (the 10,000-task numbers are in bench/bench_similarity.py and
bench/bench_dashboard.py). The synthetic tasks are made from the shipped study's real Fisher
embeddings, so the tests skip when precomputed/ has none.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from pitune_core.predict.neighbors import (
    exact_neighbours_of,
    flatten_groups,
    pair_similarity,
    recall_at_k,
    top_k_neighbours,
)
from pitune_core.predict.similarity import (
    NegativeEmbeddingError,
    NonFiniteEmbeddingError,
    ShapeMismatchError,
    fisher_similarity,
    top_k,
)
from pitune_core.predict.neighbors import read_neighbors_csv, write_neighbors_csv
from pitune_core.study import hub as H


def _groups(n: int, d: int = 96, g: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.gamma(0.5, 1.0, size=(6, d))
    X = base[rng.integers(6, size=n)] * np.exp(0.6 * rng.standard_normal((n, d)))
    return {f"g{i}": X[:, i * (d // g):(i + 1) * (d // g)].astype(np.float32) for i in range(g)}


def _exact_topk(S: np.ndarray, names: list[str], k: int) -> np.ndarray:
    return np.array([[names.index(n) for n, _ in top_k(S, names, t, k)] for t in names])


def test_pair_kernel_equals_fisher_similarity():
    groups = _groups(30)
    S = fisher_similarity(groups, dtype="float64", device="cpu")
    X, bounds = flatten_groups(groups)
    I, J = np.triu_indices(30, 1)
    got = pair_similarity(X, bounds, I, J)
    np.testing.assert_allclose(got, S[I, J], atol=2e-6)
    # a subset of groups is the mean over those groups only
    only = fisher_similarity({"g1": groups["g1"]}, dtype="float64", device="cpu")
    np.testing.assert_allclose(pair_similarity(X, bounds, I, J, groups=[1]), only[I, J], atol=2e-6)


def test_zero_group_scores_zero_like_the_matrix():
    X = np.ones((3, 8), dtype=np.float32)
    X[0, :4] = 0  # task 0 has zero Fisher in group 0
    S = fisher_similarity({"a": X[:, :4], "b": X[:, 4:]}, device="cpu")
    Xf, b = flatten_groups({"a": X[:, :4], "b": X[:, 4:]})
    np.testing.assert_allclose(pair_similarity(Xf, b, [0, 1], [1, 2]), [S[0, 1], S[1, 2]], atol=1e-7)


def test_exact_method_equals_top_k_of_the_matrix():
    groups = _groups(40)
    names = [f"t{i:02d}" for i in range(40)]
    S = fisher_similarity(groups, device="cpu")
    nb = top_k_neighbours(groups, names, k=5, method="exact")
    assert nb.method == "exact"
    np.testing.assert_array_equal(nb.index, _exact_topk(S, names, 5))
    np.testing.assert_allclose(nb.similarity, np.take_along_axis(S, nb.index, axis=1), atol=1e-9)
    assert nb.of("t00") == top_k(S, names, "t00", 5)


def test_approx_recall_against_exact():
    """Candidate search on 300 tasks: recall@10 against the exact matrix, similarities exact."""
    groups = _groups(300, d=256, g=8, seed=3)
    names = [f"t{i:03d}" for i in range(300)]
    S = fisher_similarity(groups, device="cpu")
    ref = _exact_topk(S, names, 10)
    nb = top_k_neighbours(groups, names, k=10, method="approx", candidates=60, proxy_dim=128)
    assert nb.method == "approx" and nb.info["candidates"] == 60
    assert recall_at_k(nb.index, ref) >= 0.95
    np.testing.assert_allclose(nb.similarity, np.take_along_axis(S, nb.index, axis=1), atol=2e-6)
    assert (np.diff(nb.similarity, axis=1) <= 1e-12).all()  # best first
    assert not (nb.index == np.arange(300)[:, None]).any()  # never itself
    # too few candidates loses neighbours: the recall measure can fail
    few = top_k_neighbours(groups, names, k=10, method="approx", candidates=10, proxy_dim=2, proxy_features=2)
    assert recall_at_k(few.index, ref) < recall_at_k(nb.index, ref)
    # the query-subset reference agrees with the matrix
    q = [0, 17, 299]
    idx, _ = exact_neighbours_of(groups, names, q, 10)
    np.testing.assert_array_equal(idx, ref[q])


def test_neighbours_validate_input():
    groups = _groups(10)
    names = [f"t{i}" for i in range(10)]
    with pytest.raises(ShapeMismatchError):
        top_k_neighbours(groups, names[:9], k=3)
    bad = {g: v.copy() for g, v in groups.items()}
    bad["g0"][4, 0] = np.nan
    with pytest.raises(NonFiniteEmbeddingError) as e:
        top_k_neighbours(bad, names, k=3)
    assert e.value.tasks == ["t4"]
    bad["g0"][4, 0] = -1.0
    with pytest.raises(NegativeEmbeddingError):
        top_k_neighbours(bad, names, k=3)
    with pytest.raises(ValueError, match="method"):
        top_k_neighbours(groups, names, k=3, method="fast")
    with pytest.raises(ValueError, match="larger than"):
        top_k_neighbours(groups, names, k=10)
    with pytest.raises(ValueError, match="candidates"):
        top_k_neighbours(groups, names, k=5, candidates=2, method="approx")


def test_similarity_module_does_not_import_torch():
    code = ("import sys; import pitune_core.predict.similarity, pitune_core.predict.neighbors, "
            "pitune_core.study.hub, pitune_core.study.read.reader; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ----------------------------------------------------------------------------- the synthetic hub

needs_real = pytest.mark.skipif(not H.REAL_FISHER.is_file(), reason="no shipped Fisher embeddings in precomputed/")


@needs_real
def test_synth_is_seeded_and_keeps_the_real_tasks():
    names, R, sizes = H.load_real_fisher()
    cfg = H.HubConfig(n=40, seed=5)
    E1, plan = H.synth_fisher(R, sizes, cfg)
    E2, _ = H.synth_fisher(R, sizes, cfg)
    np.testing.assert_array_equal(E1, E2)
    # the first rows are the real vectors (a zero entry, e.g. a text task's projector group, is floored
    # at float32's smallest normal number so that every entry has a logarithm)
    np.testing.assert_allclose(E1[:len(names)], R, rtol=1e-5, atol=2 * np.finfo(np.float32).tiny)
    assert (E1 > 0).all() and np.isfinite(E1).all()
    E3, _ = H.synth_fisher(R, sizes, H.HubConfig(n=40, seed=6))
    assert not np.allclose(E1[len(names):], E3[len(names):])
    hub_names = H.synth_names(names, plan)
    assert len(set(hub_names)) == 40 and hub_names[:len(names)] == names
    with pytest.raises(ValueError, match="noise"):
        H.synth_fisher(R, sizes, H.HubConfig(n=40, noise=-1))


@needs_real
def test_hub_synth_writes_a_study_the_dashboard_opens(tmp_path):
    from pitune_core.cli.main import main
    from pitune_core.study.read.reader import Study
    from pitune_core.study.verify import verify_study

    out = tmp_path / "hub"
    assert main(["hub", "synth", "--n", "36", "--k", "5", "--out", str(out)]) == 0
    assert verify_study(out, load_experts=False) == []
    study = Study.open(out)
    assert study.embeddings("lora") == ["fisher"] and study.has_matrix("lora", "fisher")
    names, index, sim = study.neighbours("lora", "fisher")
    assert len(names) == 36 and index.shape == (36, 5)
    _, S = study.similarity("lora", "fisher")
    for i in (0, 30):  # the stored table is the exact top-k of the stored matrix
        assert [(names[j], pytest.approx(s)) for j, s in zip(index[i], sim[i])] == \
            [(n, pytest.approx(s)) for n, s in top_k(S, names, names[i], 5)]
    top = study.top_k(names[30], 3, "lora", "fisher")
    assert [t.name for t in top] == [names[j] for j in index[30, :3]]
    G, summary = study.task_graph("lora", "fisher", k=2)
    assert G.number_of_nodes() == 36 and summary
    lnames, coords, _ = study.layout("lora", "fisher")
    assert sorted(lnames) == sorted(names) and np.isfinite(coords).all()
    tasks = json.loads((out / "tasks.json").read_text())
    assert tasks[30]["description"].startswith("synthetic")
    # a second synth into the same (now non-empty) directory is refused, nothing is lost
    assert main(["hub", "synth", "--n", "36", "--out", str(out)]) == 2
    assert verify_study(out, load_experts=False) == []
    # a tampered table is caught by the manifest
    p = out / "predict" / "lora" / "fisher" / "neighbors.csv"
    p.write_text(p.read_text().replace(names[0], names[1], 1))
    assert any("neighbors.csv" in x for x in verify_study(out, load_experts=False))


@needs_real
def test_sparse_hub_without_matrix(tmp_path):
    """Above --dense-max only the top-k table is written: the reader serves top-k and the kNN graph."""
    from pitune_core.study.hub import HubConfig, write_hub_study
    from pitune_core.study.read.reader import Study

    out = tmp_path / "hub"
    write_hub_study(out, HubConfig(n=30, k=4, dense_max=10), say=lambda m: None, method="approx")
    study = Study.open(out)
    assert not study.has_matrix("lora", "fisher") and study.has_neighbours("lora", "fisher")
    assert len(study.prediction_names("lora", "fisher")) == 30
    assert len(study.top_k("mnist", 3, "lora", "fisher")) == 3
    G, _ = study.task_graph("lora", "fisher", k=4)
    assert G.number_of_nodes() == 30
    with pytest.raises(ValueError):
        study.task_graph("lora", "fisher", mode="threshold")
    with pytest.raises(ValueError, match="k must be"):
        study.task_graph("lora", "fisher", k=5)


def test_neighbors_csv_is_validated(tmp_path):
    names = ["a", "b", "c"]
    p = tmp_path / "neighbors.csv"
    write_neighbors_csv(p, names, np.array([[1], [2], [0]]), np.array([[0.5], [0.4], [0.3]]))
    idx, sim = read_neighbors_csv(p, names)
    assert sim.tolist() == [[0.5], [0.4], [0.3]]
    assert idx.tolist() == [[1], [2], [0]]
    p.write_text("task,rank,neighbour,similarity\na,1,a,0.5\nb,1,c,0.4\nc,1,a,0.3\n")
    with pytest.raises(ValueError, match="line 2"):
        read_neighbors_csv(p, names)
    p.write_text("task,rank,neighbour,similarity\na,1,b,0.5\nb,1,c,0.4\n")
    with pytest.raises(ValueError, match="same number"):
        read_neighbors_csv(p, names)
    p.write_text("task,rank,neighbour,similarity\na,1,b,7\nb,1,c,0.4\nc,1,a,0.3\n")
    with pytest.raises(ValueError, match="not in"):
        read_neighbors_csv(p, names)


# ----------------------------------------------------------------------------- figures at scale

def _big_graph(n: int):
    import networkx as nx

    rng = np.random.default_rng(0)
    G = nx.Graph()
    mods = ["language", "vision", "vision-language"]
    for i in range(n):
        G.add_node(f"t{i:05d}", modality=mods[i % 3], community=i % 7)
    for i in range(n):
        for j in rng.integers(n, size=3):
            if j != i:
                G.add_edge(f"t{i:05d}", f"t{j:05d}", weight=float(rng.uniform(0.2, 0.9)))
    pos = {v: tuple(rng.normal(size=2)) for v in G}
    return G, pos


def test_graph_figure_large_has_small_nodes_bubbles_and_few_labels():
    import graphspec as GS
    from dashboard import figures as F

    G, pos = _big_graph(2000)
    sources = ["t00001", "t00002", "t00003"]
    spec = F.graph_figure(G, pos, target="t00000", sources=sources, highlight=["t01999"])
    assert sorted(GS.nodes(spec)) == sorted(G)  # every task once (the target as the star)
    assert {r["size"] for r in GS.rows(spec, "tasks")} == {25.0}  # small fixed-size markers (5 px)
    assert "stroke" not in GS.layer(spec, "tasks")["encoding"]  # no community outlines: bubbles instead
    assert sorted(lb["label"] for lb in GS.labels(spec)) == sorted(["t00000", *sources, "t01999"])
    assert "tooltip" not in GS.layer(spec, "edges")["encoding"]  # no edge hover
    assert len(GS.rows(spec, "communities")) == 7  # communities as a level of detail
    assert len(GS.rows(spec, "community labels")) == 7
    json.loads(json.dumps(spec))
    # many edges: only those around the target and its sources are drawn
    assert len(GS.rows(spec, "edges")) == G.number_of_edges()
    few = F.graph_figure(G, pos, target="t00000", sources=sources, all_edges=False)
    assert len(GS.rows(few, "edges")) == len(G.edges(["t00000", *sources]))


def test_small_graph_names_every_task_a_larger_one_its_focus():
    import graphspec as GS
    from dashboard import figures as F

    G, pos = _big_graph(20)  # up to NAME_ALL_N tasks: every node named (issue 32, point 11)
    spec = F.graph_figure(G, pos, target="t00000", sources=["t00005"])
    assert {lb["label"] for lb in GS.labels(spec)} == set(G)
    assert spec["width"] == "container"  # fills the width
    G, pos = _big_graph(F.NAME_ALL_N + 20)  # more: the target and its sources only (hover for the rest)
    spec = F.graph_figure(G, pos, target="t00000", sources=["t00005"])
    assert {lb["label"] for lb in GS.labels(spec)} == {"t00000", "t00005"}


def test_layout_figure_large_and_padded():
    import plotly.graph_objects as go

    from dashboard import figures as F

    n = 1000
    names = [f"t{i:04d}" for i in range(n)]
    coords = np.random.default_rng(1).normal(size=(n, 2))
    attrs = {x: {"modality": "vision"} for x in names}
    fig = F.layout_figure(names, coords, attrs, {x: i % 4 for i, x in enumerate(names)}, target="t0000",
                          sources=["t0001"])
    assert any(isinstance(t, go.Scattergl) for t in fig.data)
    lo, hi = fig.layout.xaxis.range
    assert lo < coords[:, 0].min() and hi > coords[:, 0].max()  # no label clipped at the edge


def test_heatmap_refuses_huge_and_block_picks_neighbours():
    from dashboard import figures as F

    n = F.HEATMAP_MAX + 50
    names = [f"t{i}" for i in range(n)]
    S = np.random.default_rng(2).uniform(size=(n, n))
    S = (S + S.T) / 2
    np.fill_diagonal(S, 1)
    with pytest.raises(ValueError, match="heatmap"):
        F.heatmap_figure(names, S)
    block = F.heatmap_block(names, S, "t3", 20)
    assert block[0] == "t3" and len(block) == 20
    others = sorted(S[3, [i for i in range(n) if i != 3]], reverse=True)
    assert sorted((S[3, names.index(b)] for b in block[1:]), reverse=True) == pytest.approx(others[:19])
    F.heatmap_figure(block, S[np.ix_([names.index(b) for b in block], [names.index(b) for b in block])])
