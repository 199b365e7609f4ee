"""2-D layouts of tasks for plotting the task map.

UMAP keeps local neighbourhoods (which tasks are close) better than PCA, but it needs enough
tasks to build a neighbour graph: below :data:`MIN_UMAP_TASKS` the ``"auto"`` method falls back
to a linear method (PCA / classical MDS) and says so in the returned note. Every method is
deterministic for a fixed ``seed``.
"""

from __future__ import annotations

import csv
import os
import warnings
from collections import Counter
from collections.abc import Sequence

import numpy as np

from pitune_core.predict.similarity import CorruptFileError, ShapeMismatchError

#: Fewest tasks for which ``method="auto"`` uses UMAP. With fewer, each task's neighbourhood
#: is nearly the whole set and UMAP's layout mostly reflects its random optimisation.
MIN_UMAP_TASKS = 8

#: Fewest tasks UMAP can handle at all: its spectral initialisation fails for n <= 3
#: ("Cannot use scipy.linalg.eigh for sparse A with k >= N", umap-learn issue #201).
UMAP_HARD_MIN = 4

_METHODS = ("auto", "umap", "pca")


def _check_method(method: str, n_neighbors: int) -> None:
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if n_neighbors < 2:
        raise ValueError(f"n_neighbors must be at least 2 (UMAP's minimum), got {n_neighbors}")


def _use_umap(method: str, n: int) -> tuple[bool, str]:
    """Decide UMAP vs the linear fallback; the string explains a fallback."""
    if method == "pca":
        return False, ""
    if method == "umap":
        if n < UMAP_HARD_MIN:
            raise ValueError(
                f"UMAP needs at least {UMAP_HARD_MIN} tasks (its spectral initialisation fails "
                f"below that), got {n}; use method='auto' or 'pca'"
            )
        return True, ""
    if n < MIN_UMAP_TASKS:
        return False, f"only {n} tasks (UMAP needs >= {MIN_UMAP_TASKS} for a meaningful neighbour graph)"
    return True, ""


def _run_umap(data: np.ndarray, metric: str, n_neighbors: int, seed: int) -> tuple[np.ndarray, str]:
    with warnings.catch_warnings():
        # umap warns (ImportWarning) that ParametricUMAP needs TensorFlow; we do not use it
        warnings.simplefilter("ignore", ImportWarning)
        import numba  # imported by umap anyway
        import umap  # slow first import (numba compilation), so only when needed

    n = data.shape[0]
    nn = min(n_neighbors, n - 1)
    clipped = f" (clipped from {n_neighbors} to n-1)" if nn != n_neighbors else ""
    threads = numba.get_num_threads()

    def fit(init):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # expected with metric="precomputed"; we never call inverse_transform
            warnings.filterwarnings("ignore", message="using precomputed metric", category=UserWarning)
            model = umap.UMAP(n_components=2, n_neighbors=nn, metric=metric, random_state=seed, n_jobs=1, init=init)
            coords = model.fit_transform(data)
        return coords, any("random init" in str(w.message) for w in caught)

    init_note = ""
    try:
        coords, fell_back = fit("spectral")
        if fell_back:
            # umap-learn's own fallback (a random init) is not reproducible across processes for such
            # graphs (it varies with Python's hash seed), so start from a deterministic layout instead
            start = _classical_mds(data) if metric == "precomputed" else _pca_2d(data, seed)
            scale = np.abs(start).max()
            if scale > 0:
                coords, _ = fit(10.0 * start / scale)
                init_note = ", initialised by " + ("classical MDS" if metric == "precomputed" else "PCA") + \
                    " (the spectral initialisation failed on this graph)"
    finally:
        numba.set_num_threads(threads)  # UMAP sets numba's global thread count to n_jobs
    note = f"UMAP (metric={metric}, n_neighbors={nn}{clipped}, seed={seed}{init_note})"
    return np.asarray(coords, dtype=np.float64), note


def _flip_signs(Y: np.ndarray) -> np.ndarray:
    """Make the largest-magnitude entry of each axis positive, so results are reproducible."""
    if Y.shape[0] == 0:
        return Y
    idx = np.argmax(np.abs(Y), axis=0)
    signs = np.sign(Y[idx, np.arange(Y.shape[1])])
    return Y * np.where(signs == 0, 1.0, signs)


def _pad2(Y: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((n, 2))
    out[:, : min(2, Y.shape[1])] = Y[:, :2]
    return out


def _pca_2d(X: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA

    n, d = X.shape
    centred = X - X.mean(axis=0)
    if n < 2 or not np.any(centred):
        return np.zeros((n, 2))  # all tasks identical: every point at the origin
    k = min(2, n, d)
    Y = PCA(n_components=k, svd_solver="full", random_state=seed).fit_transform(X)
    return _pad2(_flip_signs(Y), n)


def _classical_mds(D: np.ndarray) -> np.ndarray:
    """Torgerson MDS: the 2-D configuration whose distances best match ``D`` (PCA of ``D``)."""
    n = D.shape[0]
    J = np.eye(n) - 1.0 / n
    B = -0.5 * J @ (D**2) @ J
    vals, vecs = np.linalg.eigh((B + B.T) / 2)
    order = np.argsort(vals)[::-1][:2]
    Y = vecs[:, order] * np.sqrt(np.clip(vals[order], 0.0, None))
    return _pad2(_flip_signs(Y), n)


def layout_2d(
    X: np.ndarray,
    method: str = "auto",
    n_neighbors: int = 15,
    seed: int = 0,
    metric: str = "cosine",
) -> tuple[np.ndarray, str]:
    """2-D coordinates ``(n, 2)`` for task embeddings ``X (n, d)``, and a note on how.

    ``method``: ``"umap"`` (umap-learn, ``n_neighbors`` clipped to n-1, ``random_state=seed``),
    ``"pca"`` (sklearn; with ``metric="cosine"`` rows are L2-normalised first so PCA sees
    angles like UMAP does) or ``"auto"``: UMAP when there are >= :data:`MIN_UMAP_TASKS` tasks,
    otherwise PCA, with the reason in the note.
    """
    _check_method(method, n_neighbors)
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ShapeMismatchError(f"X must be a non-empty (n_tasks, d) array, got shape {X.shape}")
    if not np.isfinite(X).all():
        rows = np.flatnonzero(~np.isfinite(X).all(axis=1)).tolist()
        raise ValueError(f"X has NaN or inf in rows {rows[:10]}; drop or fix those tasks first")
    n = X.shape[0]
    use_umap, why = _use_umap(method, n)
    if use_umap:
        return _run_umap(X, metric, n_neighbors, seed)
    data = X
    if metric == "cosine":
        norms = np.linalg.norm(X, axis=1, keepdims=True)
        data = X / np.where(norms > 0, norms, 1.0)
    note = "PCA" + (" of L2-normalised rows" if metric == "cosine" else "")
    return _pca_2d(data, seed), note + (f": {why}" if why else "")


def layout_from_similarity(
    sim: np.ndarray, method: str = "auto", n_neighbors: int = 15, seed: int = 0
) -> tuple[np.ndarray, str]:
    """2-D coordinates from a similarity matrix, using distances ``max(1 - sim, 0)``.

    Same ``method`` rules as :func:`layout_2d`: UMAP with ``metric="precomputed"``, or classical
    (Torgerson) MDS for ``"pca"`` and for ``"auto"`` with too few tasks. Use this when only the
    similarity matrix is at hand (e.g. read back from CSV), so the map shows the same measure
    as the task graph.
    """
    _check_method(method, n_neighbors)
    sim = np.asarray(sim, dtype=np.float64)
    if sim.ndim != 2 or sim.shape[0] == 0 or sim.shape[0] != sim.shape[1]:
        raise ShapeMismatchError(f"sim must be a non-empty square (n, n) matrix, got shape {sim.shape}")
    if not np.isfinite(sim).all():
        raise ValueError("sim contains NaN or inf; recompute it from validated embeddings")
    D = np.clip(1.0 - (sim + sim.T) / 2, 0.0, None)
    np.fill_diagonal(D, 0.0)
    n = D.shape[0]
    use_umap, why = _use_umap(method, n)
    if use_umap:
        return _run_umap(D, "precomputed", n_neighbors, seed)
    return _classical_mds(D), "classical MDS of 1 - sim" + (f": {why}" if why else "")


def write_layout_csv(path: str | os.PathLike, names: Sequence[str], coords: np.ndarray) -> None:
    """Write a layout as CSV with columns ``task,x,y`` (full float precision)."""
    coords = np.asarray(coords, dtype=np.float64)
    names = [str(x) for x in names]
    if coords.ndim != 2 or coords.shape[1] != 2 or coords.shape[0] != len(names):
        raise ShapeMismatchError(
            f"coords must have shape ({len(names)}, 2) to match the names, got {coords.shape}"
        )
    dups = sorted(x for x, c in Counter(names).items() if c > 1)
    if dups:
        raise ShapeMismatchError(f"duplicate task names: {dups}")
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["task", "x", "y"])
        for name, (x, y) in zip(names, coords):
            w.writerow([name, repr(float(x)), repr(float(y))])


def read_layout_csv(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """Read a ``task,x,y`` CSV; :class:`CorruptFileError` (with the line) if it is malformed."""
    where = os.fspath(path)
    with open(path, newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.reader(fh) if r]
    if not rows or rows[0] != ["task", "x", "y"]:
        got = ",".join(rows[0]) if rows else "an empty file"
        raise CorruptFileError(f"{where}: expected the header 'task,x,y', got {got[:80]!r}")
    names, coords = [], []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != 3:
            raise CorruptFileError(f"{where}: line {line} has {len(row)} fields, expected 3 (task,x,y)")
        try:
            xy = (float(row[1]), float(row[2]))
        except ValueError as err:
            raise CorruptFileError(f"{where}: line {line}: {err}") from None
        if not np.isfinite(xy).all():
            raise CorruptFileError(f"{where}: line {line} ({row[0]!r}) has NaN or inf coordinates")
        names.append(row[0])
        coords.append(xy)
    dups = sorted(x for x, c in Counter(names).items() if c > 1)
    if dups:
        raise CorruptFileError(f"{where}: duplicate task names {dups}")
    return names, np.asarray(coords, dtype=np.float64).reshape(-1, 2)
