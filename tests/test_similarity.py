import numpy as np
import pytest

from pitune_core.predict.similarity import (
    CorruptFileError,
    NegativeEmbeddingError,
    NonFiniteEmbeddingError,
    ShapeMismatchError,
    UnknownTaskError,
    check_embeddings,
    cosine_similarity,
    fisher_similarity,
    read_similarity_csv,
    similarity_matrix,
    top_k,
    write_similarity_csv,
)


def naive_fisher(groups, eps=1e-12):
    """The paper's formula, one pair and one group at a time (the reference)."""
    arrays = list(groups.values())
    n = arrays[0].shape[0]
    sim = np.eye(n)
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            per_group = []
            for e in arrays:
                a, b = e[i].astype(np.float64), e[j].astype(np.float64)
                a2, b2 = a / (a + b + eps), b / (a + b + eps)
                na, nb = np.linalg.norm(a2), np.linalg.norm(b2)
                per_group.append(a2 @ b2 / (na * nb) if na > 0 and nb > 0 else 0.0)
            sim[i, j] = np.mean(per_group)
    return sim


@pytest.fixture
def fisher_groups():
    """7 tasks, 3 groups of different widths, Fisher-like (heavy-tailed, small, some zeros)."""
    rng = np.random.default_rng(0)
    groups = {
        "layer0.query.lora_A": rng.gamma(0.3, 1e-5, size=(7, 40)),
        "layer0.value.lora_B": rng.gamma(0.5, 1e-3, size=(7, 13)),
        "head": rng.gamma(1.0, 1.0, size=(7, 5)),
    }
    groups["layer0.query.lora_A"][2] = 0.0  # task 2 learned nothing in this group
    groups["head"][4, :3] = 0.0
    return groups


@pytest.mark.parametrize("dtype, tol", [("float32", 1e-6), ("float64", 1e-12)])
@pytest.mark.parametrize("chunk", [1, 50, 2**20])  # 1 and 50 force feature slicing / tiny blocks
def test_fisher_similarity_equals_naive_loop(fisher_groups, dtype, tol, chunk):
    expected = naive_fisher(fisher_groups)
    got = fisher_similarity(fisher_groups, chunk=chunk, dtype=dtype)
    np.testing.assert_allclose(got, expected, atol=tol, rtol=0)


def test_fisher_similarity_is_symmetric_with_unit_diagonal(fisher_groups):
    sim = fisher_similarity(fisher_groups)
    assert sim.shape == (7, 7)
    assert np.array_equal(sim, sim.T)
    assert np.array_equal(np.diag(sim), np.ones(7))
    assert sim.min() >= 0.0 and sim.max() <= 1.0


def test_fisher_similarity_is_scale_invariant_and_zero_for_disjoint_support():
    base = np.array([1.0, 2.0, 0.0, 0.0])
    groups = {
        "g": np.stack([base, 3 * base, [0.0, 0.0, 5.0, 1.0], [1.0, 0.0, 1.0, 0.0]]),
    }
    sim = fisher_similarity(groups, dtype="float64")
    assert sim[0, 1] == pytest.approx(1.0)  # proportional Fisher: same importance pattern
    assert sim[0, 2] == 0.0  # no parameter in common
    assert 0.0 < sim[0, 3] < 1.0


def test_zero_embedding_is_dissimilar_to_everything_but_itself():
    groups = {"g": np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])}
    sim = fisher_similarity(groups)
    assert sim[0, 0] == 1.0
    assert np.all(sim[0, 1:] == 0.0) and np.all(sim[1:, 0] == 0.0)


def test_fisher_similarity_rejects_nan_and_negative_by_row():
    groups = {"g": np.array([[1.0, 2.0], [np.nan, 1.0]])}
    with pytest.raises(NonFiniteEmbeddingError, match="row 1"):
        fisher_similarity(groups)
    with pytest.raises(NegativeEmbeddingError):
        fisher_similarity({"g": np.array([[1.0, 2.0], [-1.0, 1.0]])})


def test_cosine_similarity_of_concatenated_groups():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(4, 3)), rng.normal(size=(4, 5))
    X = np.concatenate([a, b], axis=1)
    expected = (X @ X.T) / np.outer(np.linalg.norm(X, axis=1), np.linalg.norm(X, axis=1))
    np.fill_diagonal(expected, 1.0)
    np.testing.assert_allclose(cosine_similarity({"a": a, "b": b}), expected, atol=1e-12)
    np.testing.assert_allclose(cosine_similarity(X), expected, atol=1e-12)  # a plain 2-D array works too


def test_cosine_similarity_flattens_trailing_dims_and_handles_zero_rows():
    lora = np.zeros((3, 2, 2))
    lora[1] = [[1, 0], [0, 1]]
    lora[2] = [[2, 0], [0, 2]]
    sim = cosine_similarity({"lora_A": lora})
    assert sim[1, 2] == pytest.approx(1.0)
    assert sim[0, 1] == 0.0 and sim[0, 0] == 1.0


def test_similarity_matrix_validates_then_dispatches(fisher_groups):
    names = [f"task{i}" for i in range(7)]
    np.testing.assert_allclose(
        similarity_matrix(fisher_groups, names), fisher_similarity(fisher_groups), atol=0
    )
    np.testing.assert_allclose(
        similarity_matrix(fisher_groups, names, kind="cosine"), cosine_similarity(fisher_groups)
    )
    with pytest.raises(ValueError, match="kind must be 'fisher' or 'cosine'"):
        similarity_matrix(fisher_groups, names, kind="euclid")


def test_nonfinite_error_names_the_diverged_tasks():
    names = ["sst2", "mnli", "vqa", "coco"]
    groups = {"q": np.ones((4, 3)), "v": np.ones((4, 2))}
    groups["q"][1, 0] = np.nan
    groups["v"][3, 1] = np.inf
    with pytest.raises(NonFiniteEmbeddingError) as info:
        similarity_matrix(groups, names)
    assert info.value.tasks == ["mnli", "coco"]
    assert info.value.groups == ["q", "v"]
    assert "diverged" in str(info.value) and "retrain it or drop the task" in str(info.value)


def test_negative_values_are_rejected_for_fisher_but_fine_for_cosine():
    names = ["a", "b", "c"]
    groups = {"g": np.array([[1.0, 0.5], [0.2, -0.1], [0.0, 1.0]])}
    with pytest.raises(NegativeEmbeddingError) as info:
        similarity_matrix(groups, names, kind="fisher")
    assert info.value.tasks == ["b"]
    assert similarity_matrix(groups, names, kind="cosine").shape == (3, 3)


@pytest.mark.parametrize(
    "groups, names, message",
    [
        ({"g": np.ones((3, 2))}, ["a", "b"], "3 rows but 2 task names"),
        ({"g": np.ones((2, 2))}, ["a", "a"], "duplicate task names"),
        ({}, ["a"], "no parameter groups"),
        ({"g": np.ones((2, 0))}, ["a", "b"], "is empty"),
        ({"g": np.ones((2, 2)), "h": np.ones((3, 2))}, ["a", "b"], "every group needs one row per task"),
        ({"g": np.ones(2)}, ["a", "b"], r"must be \(n_tasks, d_group\)"),
    ],
)
def test_check_embeddings_shape_errors(groups, names, message):
    with pytest.raises(ShapeMismatchError, match=message):
        check_embeddings(groups, names, nonnegative=True)


@pytest.fixture
def small_sim():
    names = ["sst2", "mnli", "qnli", "vqa"]
    sim = np.array(
        [
            [1.0, 0.8, 0.8, 0.1],
            [0.8, 1.0, 0.9, 0.2],
            [0.8, 0.9, 1.0, 0.3],
            [0.1, 0.2, 0.3, 1.0],
        ]
    )
    return names, sim


def test_top_k_excludes_target_and_breaks_ties_by_name(small_sim):
    names, sim = small_sim
    assert top_k(sim, names, "sst2", 2) == [("mnli", 0.8), ("qnli", 0.8)]
    assert top_k(sim, names, "vqa", 3) == [("qnli", 0.3), ("mnli", 0.2), ("sst2", 0.1)]


def test_top_k_unknown_target_suggests_close_names(small_sim):
    names, sim = small_sim
    with pytest.raises(UnknownTaskError, match="did you mean 'sst2'") as info:
        top_k(sim, names, "sst-2", 1)
    assert info.value.suggestions == ["sst2"]


@pytest.mark.parametrize(
    "k, message", [(4, "k=4 is larger than the 3 other tasks; the maximum is 3"), (0, "the maximum is 3")]
)
def test_top_k_rejects_out_of_range_k(small_sim, k, message):
    names, sim = small_sim
    with pytest.raises(ValueError, match=message):
        top_k(sim, names, "sst2", k)


def test_similarity_csv_round_trip_is_exact(tmp_path, fisher_groups):
    names = [f"task,{i}" for i in range(7)]  # commas in names are quoted, not split
    sim = fisher_similarity(fisher_groups)
    path = tmp_path / "sim.csv"
    write_similarity_csv(path, names, sim)
    assert path.read_text().splitlines()[0].startswith("task,")
    got_names, got = read_similarity_csv(path)
    assert got_names == names
    assert np.array_equal(got, sim)


def test_write_similarity_csv_refuses_asymmetric_matrix(tmp_path, small_sim):
    names, sim = small_sim
    sim = sim.copy()
    sim[0, 1] = 0.5
    with pytest.raises(ValueError, match="not symmetric"):
        write_similarity_csv(tmp_path / "x.csv", names, sim)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "file is empty"),
        ("name,a,b\na,1,0.5\nb,0.5,1\n", "header"),
        ("task,a,b\na,1,0.5\n", "square"),
        ("task,a,b\na,1,0.5\nb,0.4,1\n", "not symmetric"),
        ("task,a,b\na,1,0.5\nb,0.5\n", "line 3 has 1 values, expected 2"),
        ("task,a,b\na,1,oops\nb,0.5,1\n", "line 2"),
        ("task,a,b\nb,1,0.5\na,0.5,1\n", "header order"),
        ("task,a,b\na,0.9,0.5\nb,0.5,1\n", "diagonal entry for 'a'"),
    ],
)
def test_read_similarity_csv_reports_corruption(tmp_path, text, message):
    path = tmp_path / "sim.csv"
    path.write_text(text)
    with pytest.raises(CorruptFileError, match=message):
        read_similarity_csv(path)
