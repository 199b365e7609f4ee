"""Top-k most similar tasks at hub scale (thousands of experts) under π-Tuning's Fisher measure.

The paper's similarity normalises every *pair* (``a' = e_a / (e_a + e_b + eps)``), so it has no
Gram-matrix shortcut: all pairs of 10,000 tasks at the real LoRA dimension (d = 73,728) is 5e7
pair evaluations of 73,728 elements each, hours on a laptop. Only the top-k of each task is needed,
so :func:`top_k_neighbours` does it in two steps:

1. **Candidates from a proxy that factors.** The measure is invariant to scaling a group of either
   task and compares the *shape* of the two Fisher profiles: with ``x = log e_a - log e_b`` per
   element, ``a' = sigmoid(x)`` and the cosine is 1 when ``x`` is constant over a group and falls as
   ``x`` spreads. The spread of ``x`` within a group is the Euclidean distance between the two tasks'
   group-centred ``log(e + eps)`` vectors, which *does* factor per task. Each task's centred log
   vector (every group scaled to count the same, like the measure's mean over groups), taken on
   ``proxy_features`` seeded coordinates per group, is Gaussian-projected to ``proxy_dim``
   dimensions (distances kept up to ~1/sqrt(proxy_dim)), and each task's ``candidates`` nearest
   tasks in that space are found exactly, in blocks (one matmul per block).
2. **The exact measure on the candidates only**: a compiled (numba, parallel) kernel streams each
   candidate pair once, float32 products with float64 per-group sums, and the top-k by exact
   similarity are kept (ties broken by name, as :func:`pitune_core.predict.similarity.top_k`).

Small studies (``method="auto"`` with at most :data:`EXACT_MAX_TASKS` tasks) get the exact
vectorised matrix of :func:`pitune_core.predict.similarity.fisher_similarity` instead. Recall of the
approximation against the exact measure is measured by ``bench/bench_similarity.py`` (and tested on
a small synthetic hub in ``tests/test_hub.py``); :func:`pair_similarity` is the exact measure for
arbitrary pairs, so the recall of any query subset can be checked at any scale.

numba comes with umap-learn (pynndescent needs it); nothing here imports torch unless the exact
matrix is asked for.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from pitune_core.predict.similarity import (NegativeEmbeddingError, NonFiniteEmbeddingError, ShapeMismatchError,
                                            UnknownTaskError, _check_names, _fisher_unchecked, _group_arrays,
                                            check_k)

__all__ = ["Neighbours", "top_k_neighbours", "pair_similarity", "proxy_vectors", "flatten_groups",
           "recall_at_k", "exact_neighbours_of", "EXACT_MAX_TASKS"]

#: ``method="auto"`` computes the exact matrix up to this many tasks, the candidate search above.
EXACT_MAX_TASKS = 500


@dataclass
class Neighbours:
    """The ``k`` most similar other tasks of every task, best first.

    ``index[i]`` are row numbers into ``names``, ``similarity[i]`` the exact Fisher similarities
    (float64); ``method`` is ``"exact"`` or ``"approx"``; ``info`` holds timings and settings.
    """

    names: list[str]
    index: np.ndarray
    similarity: np.ndarray
    method: str
    info: dict = field(default_factory=dict)

    @property
    def k(self) -> int:
        return int(self.index.shape[1])

    def of(self, task: str) -> list[tuple[str, float]]:
        """``[(neighbour, similarity), ...]`` of one task, best first."""
        try:
            i = self.names.index(task)
        except ValueError:
            raise UnknownTaskError(task, self.names) from None
        return [(self.names[j], float(s)) for j, s in zip(self.index[i].tolist(), self.similarity[i].tolist())]


# --------------------------------------------------------------------------------------------
# input


def flatten_groups(groups, group_sizes: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(X, bounds)``: one C-contiguous float32 ``(n, d)`` matrix and group boundaries ``(G + 1,)``.

    ``groups`` is a mapping ``{group: (n, d_g)}`` (concatenated in order, one copy) or an ``(n, d)``
    array; for an array, ``group_sizes`` splits its columns into groups (default: one group). A
    float32 C-contiguous array is used as is (no copy), so a 10,000 x 73,728 hub costs its 2.9 GB once.
    """
    if isinstance(groups, Mapping):
        if group_sizes is not None:
            raise ValueError("group_sizes is only for a single (n, d) array; a mapping names its groups")
        arrays = _group_arrays(groups)
        sizes = [a.shape[1] for a in arrays.values()]
        X = np.concatenate([a.astype(np.float32, copy=False) for a in arrays.values()], axis=1)
    else:
        X = np.asarray(groups)
        if X.ndim != 2 or X.dtype.kind not in "biuf":
            raise ShapeMismatchError(f"embeddings must be a numeric (n_tasks, d) array, got shape {X.shape}")
        sizes = [X.shape[1]] if group_sizes is None else [int(s) for s in group_sizes]
        if any(s < 1 for s in sizes) or sum(sizes) != X.shape[1]:
            raise ShapeMismatchError(f"group_sizes {sizes[:5]}... must be positive and add up to d = {X.shape[1]}")
    X = np.ascontiguousarray(X, dtype=np.float32)
    if X.shape[1] == 0:
        raise ShapeMismatchError("the embeddings have no columns")
    return X, np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def _check_values(X: np.ndarray, names: list[str], block: int = 512) -> None:
    """Finite and >= 0, checked in row blocks (no full-size temporaries); errors name the tasks."""
    bad, neg = [], []
    for i0 in range(0, X.shape[0], block):
        blk = X[i0:i0 + block]
        bad += (i0 + np.flatnonzero(~np.isfinite(blk).all(axis=1))).tolist()
        neg += (i0 + np.flatnonzero((blk < 0).any(axis=1))).tolist()
    if bad:
        tasks = [names[i] for i in bad]
        raise NonFiniteEmbeddingError(f"non-finite values (NaN or inf) in the embedding of {len(tasks)} task(s): "
                                      f"{tasks[:10]}; the expert probably diverged; retrain it or drop the task", tasks)
    neg = [i for i in neg if i not in set(bad)]
    if neg:
        tasks = [names[i] for i in neg]
        raise NegativeEmbeddingError(f"negative values in the Fisher embedding of task(s) {tasks[:10]}; diagonal "
                                     "Fisher values are squared gradients and must be >= 0", tasks)


# --------------------------------------------------------------------------------------------
# the exact measure on arbitrary pairs (numba)

_KERNEL = None


def _kernel():
    """Compile (once per process; cached on disk by numba) the pair kernel."""
    global _KERNEL
    if _KERNEL is None:
        import numba

        @numba.njit(parallel=True, fastmath=True, cache=True, nogil=True)
        def pair_sims(X, bounds, groups, I, J, eps, out):  # pragma: no cover - compiled
            G = groups.shape[0]
            e = np.float32(eps)
            for p in numba.prange(I.shape[0]):
                a = X[I[p]]
                b = X[J[p]]
                total = 0.0
                for gi in range(G):
                    g = groups[gi]
                    tt = 0.0
                    tu = 0.0
                    uu = 0.0
                    for t in range(bounds[g], bounds[g + 1]):
                        x = a[t]
                        y = b[t]
                        w = np.float32(1.0) / (x + y + e)
                        xa = x * w
                        yb = y * w
                        tt += xa * xa
                        tu += xa * yb
                        uu += yb * yb
                    den = math.sqrt(tt * uu)
                    c = tu / den if den > 0.0 else 0.0
                    total += min(1.0, max(0.0, c))
                out[p] = total / G

        _KERNEL = pair_sims
    return _KERNEL


def pair_similarity(X: np.ndarray, bounds: np.ndarray, I, J, eps: float = 1e-12, groups=None) -> np.ndarray:
    """The exact Fisher similarity of the pairs ``(I[p], J[p])`` of rows of ``X`` (float64).

    Same measure and conventions as :func:`pitune_core.predict.similarity.fisher_similarity`
    (per-group cosine of the pair-normalised vectors, mean over groups, a group where a' or b'
    is all zero scores 0, values clipped to [0, 1]); ``X`` and ``bounds`` as from
    :func:`flatten_groups`. Products are float32 (like fisher_similarity's default), sums float64.
    Pairs sorted by ``I`` reuse the cached row of ``X``. ``groups``: only these group numbers
    (the mean over them; default all), e.g. for a cheap first look at many candidates.
    """
    I = np.ascontiguousarray(I, dtype=np.int64)
    J = np.ascontiguousarray(J, dtype=np.int64)
    if I.shape != J.shape or I.ndim != 1:
        raise ValueError("I and J must be 1-D arrays of the same length")
    n = X.shape[0]
    if I.size and (min(I.min(), J.min()) < 0 or max(I.max(), J.max()) >= n):
        raise IndexError(f"pair indices must lie in [0, {n})")
    if eps < 0 or not math.isfinite(eps):
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")
    out = np.empty(I.shape[0], dtype=np.float64)
    if I.size:
        G = len(bounds) - 1
        gs = np.arange(G, dtype=np.int64) if groups is None else np.asarray(groups, dtype=np.int64)
        if gs.size == 0 or gs.min() < 0 or gs.max() >= G:
            raise ValueError(f"groups must be group numbers in [0, {G})")
        _kernel()(X, np.ascontiguousarray(bounds, dtype=np.int64), gs, I, J, float(eps), out)
    return out


# --------------------------------------------------------------------------------------------
# the proxy


def proxy_vectors(X: np.ndarray, bounds: np.ndarray, dim: int = 256, eps: float = 1e-12, seed: int = 0,
                  features: int | None = 512, block: int = 2048) -> np.ndarray:
    """Per task: ``log(e + eps)`` centred within each group, each group scaled by 1/sqrt(d_g)
    (every group counts the same, as in the measure), Gaussian-projected to ``dim`` dimensions.

    Squared Euclidean distances between these vectors estimate the sum over groups of the
    variance of the log-ratio of two tasks' Fisher values, which the Fisher similarity decreases
    with. A variance is estimated well from a sample, so only ``features`` seeded random
    coordinates per group are used (None: all; the logarithm of all 7e8 values of a 10,000-task
    LoRA hub would cost more than the rest of the search). Row blocks of ``block`` tasks keep the
    temporaries small; float32 throughout.
    """
    n = X.shape[0]
    rng = np.random.default_rng(seed)
    sizes = np.diff(bounds)
    cols, scale = [], []
    for g, size in enumerate(sizes.tolist()):
        take = size if features is None or features >= size else int(features)
        c = np.arange(size) if take == size else np.sort(rng.choice(size, take, replace=False))
        cols.append(bounds[g] + c)
        scale.append(np.full(take, 1.0 / math.sqrt(take), dtype=np.float32))
    cols_all = np.concatenate(cols)
    scale_all = np.concatenate(scale)
    starts = np.concatenate([[0], np.cumsum([len(c) for c in cols])])
    m = len(cols_all)
    R = None
    if dim < m:
        R = rng.standard_normal((m, dim), dtype=np.float32) / np.float32(math.sqrt(dim))
    out = np.empty((n, dim if R is not None else m), dtype=np.float32)
    e = np.float32(max(eps, np.finfo(np.float32).tiny))
    for i0 in range(0, n, block):
        L = X[i0:i0 + block][:, cols_all]
        L += e
        np.log(L, out=L)
        for g in range(len(sizes)):
            s = slice(starts[g], starts[g + 1])
            L[:, s] -= L[:, s].mean(axis=1, keepdims=True)
        L *= scale_all
        out[i0:i0 + block] = L if R is None else L @ R
    return out


def _proxy_candidates(Z: np.ndarray, c: int, block: int = 1024) -> np.ndarray:
    """Each row's ``c`` nearest other rows of ``Z`` (squared Euclidean), exact, in row blocks."""
    n = Z.shape[0]
    sq = np.einsum("ij,ij->i", Z, Z)
    out = np.empty((n, c), dtype=np.int64)
    for i0 in range(0, n, block):
        i1 = min(n, i0 + block)
        D = sq[None, :] - 2.0 * (Z[i0:i1] @ Z.T)  # + sq[i] is constant per row: not needed to rank
        D[np.arange(i1 - i0), np.arange(i0, i1)] = np.inf
        part = np.argpartition(D, c - 1, axis=1)[:, :c]
        out[i0:i1] = part
    return out


# --------------------------------------------------------------------------------------------
# top-k


def _rank_of_names(names: list[str]) -> np.ndarray:
    return np.argsort(np.argsort(np.array(names, dtype=object), kind="stable"), kind="stable")


def _select(cand: np.ndarray, sims: np.ndarray, k: int, name_rank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the ``k`` candidates with the highest similarity (ties: by name)."""
    n = cand.shape[0]
    idx = np.empty((n, k), dtype=np.int64)
    val = np.empty((n, k), dtype=np.float64)
    for i in range(n):
        order = np.lexsort((name_rank[cand[i]], -sims[i]))[:k]
        idx[i] = cand[i, order]
        val[i] = sims[i, order]
    return idx, val


def top_k_neighbours(
    embeddings,
    names: Sequence[str],
    k: int = 10,
    *,
    candidates: int | None = None,
    method: str = "auto",
    group_sizes: Sequence[int] | None = None,
    eps: float = 1e-12,
    proxy_dim: int = 1024,
    proxy_features: int | None = 512,
    shortlist: int | None = None,
    seed: int = 0,
    progress=None,
) -> Neighbours:
    """The ``k`` tasks most similar to every task under π-Tuning's Fisher measure, best first.

    ``embeddings``: a mapping ``{group: (n, d_g)}`` (as in :mod:`pitune_core.predict.similarity`)
    or an ``(n, d)`` array with ``group_sizes`` (one group if omitted); ``names`` one per row.

    ``method``: ``"exact"`` — the full matrix (:func:`~pitune_core.predict.similarity.fisher_similarity`,
    O(n^2 d)), for small studies and as the reference; ``"approx"`` — ``candidates`` nearest tasks
    (default ``max(10 k, 100)``) by the log-Fisher proxy (:func:`proxy_vectors` with ``proxy_dim``
    and ``proxy_features``), then the exact measure on those pairs only (O(n c d)); ``"auto"`` —
    exact up to :data:`EXACT_MAX_TASKS` tasks, else approx. ``shortlist`` (off by default): first
    score the candidates on every 4th group only and keep this many for the full measure (cheaper,
    but on the synthetic hub it lost more neighbours than it saved time; see bench/).
    Defaults measured on a 10,000-task synthetic hub at d = 73,728 (bench/bench_similarity.py):
    recall@10 0.984 against the exact measure.
    The returned similarities are always exact; only which tasks are looked at is approximate.
    Validates like :func:`~pitune_core.predict.similarity.check_embeddings` (finite, >= 0, unique names).
    ``progress``: optional callable(stage: str) for long runs.
    """
    import time

    if method not in ("auto", "exact", "approx"):
        raise ValueError(f"method must be 'auto', 'exact' or 'approx', got {method!r}")
    names = _check_names(names)
    X, bounds = flatten_groups(embeddings, group_sizes)
    n = X.shape[0]
    if n != len(names):
        raise ShapeMismatchError(f"the embeddings have {n} rows but {len(names)} task names were given")
    k = check_k(k, n)
    if eps < 0 or not math.isfinite(eps):
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")
    if proxy_dim < 1:
        raise ValueError(f"proxy_dim must be >= 1, got {proxy_dim}")
    c = max(10 * k, 100) if candidates is None else int(candidates)
    if c < k:
        raise ValueError(f"candidates={c} must be at least k={k}")
    c = min(c, n - 1)
    if method == "auto":
        method = "exact" if n <= EXACT_MAX_TASKS or c >= n - 1 else "approx"
    say = progress or (lambda stage: None)
    t0 = time.perf_counter()
    _check_values(X, names)
    name_rank = _rank_of_names(names)
    info: dict = {"n": n, "d": int(X.shape[1]), "groups": int(len(bounds) - 1), "k": k, "eps": eps}
    if method == "exact":
        say("exact similarity matrix")
        groups = {str(g): X[:, bounds[g]:bounds[g + 1]] for g in range(len(bounds) - 1)}
        S = _fisher_unchecked(groups, eps, None, "float32", "cpu")
        np.fill_diagonal(S, -np.inf)
        cand = np.argsort(-S, axis=1, kind="stable")[:, : min(n - 1, k + 32)]
        sims = np.take_along_axis(S, cand, axis=1)
        idx, val = _select(cand, sims, k, name_rank)
        info["seconds"] = {"exact": time.perf_counter() - t0}
        return Neighbours(names, idx, val, "exact", info)

    say("proxy vectors")
    Z = proxy_vectors(X, bounds, dim=proxy_dim, eps=eps, seed=seed, features=proxy_features)
    t1 = time.perf_counter()
    say("proxy candidates")
    cand = _proxy_candidates(Z, c)
    t2 = time.perf_counter()
    G = len(bounds) - 1
    pairs = 0
    shortlist = c if shortlist is None else int(shortlist)
    if shortlist < k:
        raise ValueError(f"shortlist={shortlist} must be at least k={k}")
    if G >= 8 and shortlist < c:
        # first look: the exact measure on every 4th group only (a quarter of the cost, and a far
        # better estimate than the proxy), keeping each task's ``shortlist`` best candidates
        say(f"partial exact measure (groups {G // 4} of {G}) on the candidates")
        first = np.arange(0, G, 4)
        part, n_pairs = _pair_table(X, bounds, cand, eps, first)
        pairs += n_pairs * len(first) / G
        order = np.argsort(-part, axis=1, kind="stable")[:, :shortlist]
        cand = np.take_along_axis(cand, order, axis=1)
    t3 = time.perf_counter()
    say(f"exact measure on {cand.shape[1]} candidates per task")
    sims, n_pairs = _pair_table(X, bounds, cand, eps, None)
    pairs += n_pairs
    t4 = time.perf_counter()
    idx, val = _select(cand, sims, k, name_rank)
    info.update(candidates=c, shortlist=int(cand.shape[1]), proxy_dim=int(Z.shape[1]), proxy_features=proxy_features,
                pairs=int(pairs), seed=seed,
                seconds={"proxy": t1 - t0, "candidates": t2 - t1, "first_look": t3 - t2, "exact_pairs": t4 - t3,
                         "select": time.perf_counter() - t4, "total": time.perf_counter() - t0})
    return Neighbours(names, idx, val, "approx", info)


def _pair_table(X: np.ndarray, bounds: np.ndarray, cand: np.ndarray, eps: float, groups) -> tuple[np.ndarray, int]:
    """``sims (n, c)`` of every row with its candidates, each unordered pair computed once
    (sorted by the first row, so the kernel reuses the cached row); and the number of pairs."""
    n, c = cand.shape
    rows = np.repeat(np.arange(n, dtype=np.int64), c)
    cols = cand.reshape(-1)
    lo, hi = np.minimum(rows, cols), np.maximum(rows, cols)
    keys = np.unique(lo * n + hi)
    vals = pair_similarity(X, bounds, keys // n, keys % n, eps, groups)
    return vals[np.searchsorted(keys, lo * n + hi)].reshape(n, c), int(len(keys))


def exact_neighbours_of(embeddings, names: Sequence[str], queries: Sequence[int], k: int = 10, *,
                        group_sizes: Sequence[int] | None = None, eps: float = 1e-12) -> tuple[np.ndarray, np.ndarray]:
    """The exact top-k of some query rows against all tasks: ``(index (q, k), similarity (q, k))``.

    The reference for recall at hub scale, where the full matrix is out of reach: each query is
    compared with every other task by :func:`pair_similarity` (O(q n d)); ties broken by name.
    """
    names = _check_names(names)
    X, bounds = flatten_groups(embeddings, group_sizes)
    n = X.shape[0]
    k = check_k(k, n)
    name_rank = _rank_of_names(names)
    q = np.asarray(queries, dtype=np.int64)
    idx = np.empty((len(q), k), dtype=np.int64)
    val = np.empty((len(q), k))
    others = np.arange(n, dtype=np.int64)
    for r, i in enumerate(q.tolist()):
        cand = others[others != i]
        s = pair_similarity(X, bounds, np.full(len(cand), i, dtype=np.int64), cand, eps)
        i_k, v_k = _select(cand[None, :], s[None, :], k, name_rank)
        idx[r], val[r] = i_k[0], v_k[0]
    return idx, val


def recall_at_k(found: np.ndarray, reference: np.ndarray) -> float:
    """Mean over rows of |found[i] ∩ reference[i]| / k (both ``(m, k)`` index arrays)."""
    found, reference = np.asarray(found), np.asarray(reference)
    if found.shape != reference.shape:
        raise ValueError(f"shapes differ: {found.shape} vs {reference.shape}")
    k = reference.shape[1]
    return float(np.mean([len(set(f.tolist()) & set(r.tolist())) / k for f, r in zip(found, reference)]))


# ----------------------------------------------------------------------------- the neighbours file

def write_neighbors_csv(path: str | os.PathLike, names: list[str], index: np.ndarray, sim: np.ndarray) -> None:
    """``task,rank,neighbour,similarity``: every task's top-k, best first (rank 1 = most similar)."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["task", "rank", "neighbour", "similarity"])
        for i, name in enumerate(names):
            for r, (j, s) in enumerate(zip(index[i].tolist(), sim[i].tolist()), start=1):
                w.writerow([name, r, names[j], repr(float(s))])


def read_neighbors_csv(path: str | os.PathLike, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(index (n, k), similarity (n, k))`` in ``names`` order; ValueError (with the line) if the
    file is not a complete, consistent top-k table of exactly those tasks."""
    where = os.fspath(path)
    pos = {n: i for i, n in enumerate(names)}
    rows: dict[int, list[tuple[int, int, float]]] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        if next(reader, None) != ["task", "rank", "neighbour", "similarity"]:
            raise ValueError(f"{where}: expected the header 'task,rank,neighbour,similarity'")
        for line, r in enumerate(reader, start=2):
            if len(r) != 4 or r[0] not in pos or r[2] not in pos or r[0] == r[2]:
                raise ValueError(f"{where}: line {line} is not 'task,rank,neighbour,similarity' of two "
                                 "different tasks of this study")
            try:
                rank, s = int(r[1]), float(r[3])
            except ValueError:
                raise ValueError(f"{where}: line {line}: rank must be an integer and similarity a number") from None
            if not (math.isfinite(s) and -1e-9 <= s <= 1 + 1e-9):
                raise ValueError(f"{where}: line {line}: similarity {s} is not in [0, 1]")
            rows.setdefault(pos[r[0]], []).append((rank, pos[r[2]], s))
    k = len(rows.get(0, []))
    if len(rows) != len(names) or k == 0 or any(len(v) != k for v in rows.values()):
        raise ValueError(f"{where}: every one of the {len(names)} tasks needs the same number of neighbours")
    index = np.empty((len(names), k), dtype=np.int64)
    sim = np.empty((len(names), k))
    for i, v in rows.items():
        v.sort()
        if [x[0] for x in v] != list(range(1, k + 1)):
            raise ValueError(f"{where}: ranks of {names[i]!r} are not 1..{k}")
        index[i] = [x[1] for x in v]
        sim[i] = [x[2] for x in v]
    return index, sim
