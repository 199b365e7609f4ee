"""Task-to-task similarity from expert embeddings (the "predict" half of π-Tuning).

A task is embedded by the diagonal Fisher information of its parameter-efficient expert, kept
as *parameter groups*: ``groups[name]`` is an array of shape ``(n_tasks, d_group)`` (trailing
dimensions are flattened), one row per task in the order of ``names``. Similar tasks are the
candidates whose experts get interpolated, so the similarity has to be right and cheap enough to
compute for every pair of a large task pool.

torch is imported only inside the functions that compute with it, so reading a similarity file
(the dashboard's first page) does not load torch. For the top-k of thousands of tasks, see
:mod:`pitune_core.predict.neighbors`.
"""

from __future__ import annotations

import csv
import difflib
import math
import os
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Union

import numpy as np

if TYPE_CHECKING:  # annotations only: torch is imported where it is used
    import torch

Groups = Union[Mapping[str, np.ndarray], np.ndarray]

#: Default number of elements in one block of :func:`fisher_similarity` on CPU (fits in cache)
#: and on CUDA (large enough that kernel launches do not dominate).
DEFAULT_CHUNK = 2**20
DEFAULT_CHUNK_CUDA = 2**26

_SYMMETRY_TOL = 1e-6


class ShapeMismatchError(ValueError):
    """Arrays whose shapes do not match the task list (or each other)."""


class NonFiniteEmbeddingError(ValueError):
    """Some tasks have NaN or inf in their embedding; ``.tasks`` lists them, ``.groups`` where."""

    def __init__(self, message: str, tasks: Sequence[str], groups: Sequence[str] = ()):
        super().__init__(message)
        self.tasks = list(tasks)
        self.groups = list(groups)


class NegativeEmbeddingError(ValueError):
    """Fisher embeddings must be >= 0; ``.tasks`` lists the tasks that are not."""

    def __init__(self, message: str, tasks: Sequence[str], groups: Sequence[str] = ()):
        super().__init__(message)
        self.tasks = list(tasks)
        self.groups = list(groups)


class UnknownTaskError(ValueError):
    """A task name that is not in the task list; ``.suggestions`` holds close matches."""

    def __init__(self, task: str, known: Sequence[str]):
        self.task = task
        self.suggestions = difflib.get_close_matches(task, list(known), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(map(repr, self.suggestions))}?" if self.suggestions else ""
        shown = ", ".join(map(repr, list(known)[:10])) + (", ..." if len(known) > 10 else "")
        super().__init__(f"unknown task {task!r}{hint} (known tasks: {shown})")


class CorruptFileError(ValueError):
    """A similarity / layout / graph file that cannot be read back; the message says where."""


# --------------------------------------------------------------------------------------------
# validation


def _group_arrays(groups: Groups) -> dict[str, np.ndarray]:
    """Return ``{group: 2-D array}`` with trailing dims flattened; checks row counts agree."""
    torch = sys.modules.get("torch")  # a tensor can only exist if torch is already loaded
    if isinstance(groups, np.ndarray) or (torch is not None and torch.is_tensor(groups)):
        groups = {"embedding": np.asarray(groups)}
    if not isinstance(groups, Mapping):
        raise ShapeMismatchError(
            f"groups must be a mapping {{group name: array (n_tasks, d_group)}} or one 2-D array, "
            f"got {type(groups).__name__}"
        )
    if len(groups) == 0:
        raise ShapeMismatchError("no parameter groups given; pass at least one (n_tasks, d_group) array")
    out: dict[str, np.ndarray] = {}
    n_rows: int | None = None
    first = ""
    for name, value in groups.items():
        arr = np.asarray(value)
        if arr.dtype.kind not in "biuf":
            raise ShapeMismatchError(f"group {name!r} has non-numeric dtype {arr.dtype}")
        if arr.ndim < 2:
            raise ShapeMismatchError(
                f"group {name!r} has shape {arr.shape}; it must be (n_tasks, d_group) "
                "(for a single task use x[None, :])"
            )
        arr = arr.reshape(arr.shape[0], -1)
        if arr.shape[1] == 0:
            raise ShapeMismatchError(f"group {name!r} is empty (shape {arr.shape}); drop it")
        if n_rows is None:
            n_rows, first = arr.shape[0], name
        elif arr.shape[0] != n_rows:
            raise ShapeMismatchError(
                f"group {name!r} has {arr.shape[0]} rows but group {first!r} has {n_rows}; "
                "every group needs one row per task"
            )
        out[str(name)] = arr
    return out


def _check_names(names: Sequence[str]) -> list[str]:
    names = [str(x) for x in names]
    if not names:
        raise ShapeMismatchError("names is empty; pass one name per task (row)")
    dups = sorted(x for x, c in Counter(names).items() if c > 1)
    if dups:
        raise ShapeMismatchError(f"duplicate task names: {dups}; task names must be unique")
    return names


def check_embeddings(groups: Groups, names: Sequence[str], nonnegative: bool = True) -> None:
    """Raise a clear error if the embeddings cannot give a meaningful similarity.

    Checks shapes (one row per name, no empty group, unique names), finiteness (a NaN Fisher
    usually means the expert diverged) and, with ``nonnegative``, the sign (Fisher values are
    expected squared gradients, so a negative value means a bug upstream).
    """
    arrays = _group_arrays(groups)
    names = _check_names(names)
    n = next(iter(arrays.values())).shape[0]
    if n != len(names):
        raise ShapeMismatchError(
            f"the embeddings have {n} rows but {len(names)} task names were given; "
            "names must list the tasks in row order"
        )
    bad_rows = np.zeros(n, dtype=bool)
    bad_groups = []
    for g, arr in arrays.items():
        rows = ~np.isfinite(arr).all(axis=1) if arr.dtype.kind == "f" else np.zeros(n, dtype=bool)
        if rows.any():
            bad_rows |= rows
            bad_groups.append(g)
    if bad_rows.any():
        tasks = [names[i] for i in np.flatnonzero(bad_rows)]
        raise NonFiniteEmbeddingError(
            f"non-finite values (NaN or inf) in the embedding of {len(tasks)} task(s): {tasks} "
            f"(groups {bad_groups}); the expert probably diverged; retrain it or drop the task",
            tasks,
            bad_groups,
        )
    if nonnegative:
        neg_rows = np.zeros(n, dtype=bool)
        neg_groups = []
        lowest = 0.0
        for g, arr in arrays.items():
            rows = (arr < 0).any(axis=1)
            if rows.any():
                neg_rows |= rows
                neg_groups.append(g)
                lowest = min(lowest, float(arr.min()))
        if neg_rows.any():
            tasks = [names[i] for i in np.flatnonzero(neg_rows)]
            raise NegativeEmbeddingError(
                f"negative values (min {lowest:.3g}) in the Fisher embedding of task(s) {tasks} "
                f"(groups {neg_groups}); diagonal Fisher values are squared gradients and must be "
                ">= 0; check how the embedding was computed, or use kind='cosine'",
                tasks,
                neg_groups,
            )


def check_similarity(sim: np.ndarray, names: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Return ``sim`` as float64 and ``names`` as strings after checking they describe one
    finite square matrix with one unique name per row."""
    sim = np.asarray(sim, dtype=np.float64)
    names = _check_names(names)
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        raise ShapeMismatchError(f"sim must be a square (n, n) matrix, got shape {sim.shape}")
    if sim.shape[0] != len(names):
        raise ShapeMismatchError(
            f"sim is {sim.shape[0]}x{sim.shape[1]} but {len(names)} task names were given"
        )
    if not np.isfinite(sim).all():
        raise ValueError("sim contains NaN or inf; recompute it from validated embeddings")
    return sim, names


def check_k(k: int, n_tasks: int) -> int:
    """Validate a neighbour count against the number of *other* tasks (n_tasks - 1)."""
    n_other = n_tasks - 1
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an integer, got {k!r}")
    if n_other < 1:
        raise ValueError(f"there is only {n_tasks} task, so it has no neighbours; add tasks first")
    if k < 1:
        raise ValueError(f"k={k} must be at least 1; the maximum is {n_other}")
    if k > n_other:
        raise ValueError(f"k={k} is larger than the {n_other} other tasks; the maximum is {n_other}")
    return int(k)


# --------------------------------------------------------------------------------------------
# similarity measures

def _torch_dtype(dtype: str | np.dtype | type) -> torch.dtype:
    import torch

    key = np.dtype(dtype).name
    dtypes = {"float32": torch.float32, "float64": torch.float64}
    if key not in dtypes:
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    return dtypes[key]


def _accumulate_group(X: torch.Tensor, eps: float, chunk: int, acc: torch.Tensor) -> None:
    """Add cos(a', b') of one group to ``acc`` for every block on or above the diagonal.

    Per block of B x B task pairs (and a slice of the features), a' and b' are written side by
    side into one ``(B, B, 2, d)`` buffer and a single batched matmul with its transpose gives
    the 2x2 Gram matrix [[a'.a', a'.b'], [b'.a', b'.b']] of every pair. That is 3 elementwise
    ops + 1 matmul per block: few large ops keep torch's threads busy. B*B*2*d <= chunk, and
    huge groups are sliced along the features (partial Gram matrices are summed), so memory
    stays bounded and blocks never degrade to single pairs.
    """
    import torch

    n, d = X.shape
    dc = min(d, max(1, chunk // 128))  # a feature slice small enough for >= 8x8 pair blocks
    B = max(1, min(n, math.isqrt(max(1, chunk // (2 * dc)))))
    Xe = X + eps
    s_buf = torch.empty(B * B * dc, dtype=X.dtype, device=X.device)
    ab_buf = torch.empty(2 * B * B * dc, dtype=X.dtype, device=X.device)
    for i0 in range(0, n, B):
        i1 = min(n, i0 + B)
        for j0 in range(i0, n, B):
            j1 = min(n, j0 + B)
            bi, bj = i1 - i0, j1 - j0
            gram = torch.zeros(bi, bj, 2, 2, dtype=X.dtype, device=X.device)
            for k0 in range(0, d, dc):
                k1 = min(d, k0 + dc)
                a = X[i0:i1, k0:k1][:, None, :]
                b = X[j0:j1, k0:k1][None, :, :]
                s = s_buf[: bi * bj * (k1 - k0)].view(bi, bj, k1 - k0)
                ab = ab_buf[: 2 * s.numel()].view(bi, bj, 2, k1 - k0)
                torch.add(a, Xe[j0:j1, k0:k1][None, :, :], out=s)  # e_a + e_b + eps
                torch.div(a, s, out=ab[:, :, 0])  # a'
                torch.div(b, s, out=ab[:, :, 1])  # b'
                gram += ab @ ab.transpose(-1, -2)
            tt, tu, uu = gram[..., 0, 0], gram[..., 0, 1], gram[..., 1, 1]
            den = torch.sqrt(tt * uu)
            cos = torch.where(den > 0, tu / den, 0.0).clamp_(0.0, 1.0)  # tu = 0 wherever den = 0
            acc[i0:i1, j0:j1] += cos.to(acc.dtype)


def _fisher_unchecked(
    arrays: Mapping[str, np.ndarray], eps: float, chunk: int | None, dtype, device
) -> np.ndarray:
    import torch

    from pitune_core.model.device import default_device  # lazy: loads torch

    if eps < 0 or not math.isfinite(eps):
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")
    tdtype = _torch_dtype(dtype)
    dev = default_device(str(device) if device is not None else None)
    if chunk is None:
        chunk = DEFAULT_CHUNK_CUDA if dev.type == "cuda" else DEFAULT_CHUNK
    if int(chunk) < 1:
        raise ValueError(f"chunk must be a positive number of elements, got {chunk}")
    limit = torch.finfo(tdtype).max / 4
    n = next(iter(arrays.values())).shape[0]
    acc = torch.zeros(n, n, dtype=torch.float64, device=dev)
    for g, arr in arrays.items():
        if arr.size and float(np.max(arr)) > limit:
            raise ValueError(
                f"group {g!r} has values up to {np.max(arr):.3g}, too large for {tdtype}; "
                "pass dtype='float64' or rescale the embeddings"
            )
        X = torch.as_tensor(np.ascontiguousarray(arr), device=dev).to(tdtype)
        _accumulate_group(X, float(eps), int(chunk), acc)
    upper = torch.triu(acc / len(arrays), diagonal=1).cpu().numpy()
    sim = upper + upper.T
    np.fill_diagonal(sim, 1.0)
    return sim


def fisher_similarity(
    groups: Groups,
    eps: float = 1e-12,
    chunk: int | None = None,
    dtype: str = "float32",
    device: str | None = None,
) -> np.ndarray:
    """π-Tuning's Fisher task similarity for every pair of tasks, shape ``(n, n)``.

    For tasks a, b and each group g: ``a' = e_a / (e_a + e_b + eps)``, ``b' = e_b / (e_a + e_b
    + eps)`` (elementwise), ``sim_g = cos(a', b')``; the result is the unweighted mean over
    groups, so every layer counts the same whatever its size. The per-pair normalisation makes
    this a kernel rather than a Gram matrix: it is computed with torch over the upper triangle
    in ``rows x cols x features`` blocks of at most ``chunk`` elements (peak extra memory about
    1.5 x chunk x itemsize; by default 2**20 elements = 6 MB on CPU, 2**26 on CUDA), each
    reduced by one batched matmul.

    Conventions: the diagonal is exactly 1; a group in which a' or b' is all zero (e.g. both
    tasks have zero Fisher there) contributes similarity 0 for that pair. Values lie in [0, 1].
    ``dtype='float32'`` (default) agrees with float64 to ~1e-7, but squares of a' below ~1e-22
    underflow, so a group where one task's Fisher is > ~1e22 times the other's everywhere (or
    both are far below ``eps``) scores 0 instead of its float64 value: use 'float64' for such
    data. ``device`` follows :func:`pitune_core.model.device.default_device` (CUDA when present).
    """
    arrays = _group_arrays(groups)
    n = next(iter(arrays.values())).shape[0]
    check_embeddings(arrays, [f"row {i}" for i in range(n)], nonnegative=True)
    return _fisher_unchecked(arrays, eps, chunk, dtype, device)


def cosine_similarity(groups: Groups) -> np.ndarray:
    """Plain cosine similarity of the concatenated (flattened) embeddings; a baseline measure.

    Accepts a group mapping or a single ``(n, d)`` array. A zero vector has similarity 0 to all
    other tasks; the diagonal is exactly 1.
    """
    arrays = _group_arrays(groups)
    X = np.concatenate([a.astype(np.float64, copy=False) for a in arrays.values()], axis=1)
    norms = np.linalg.norm(X, axis=1)
    Xn = X / np.where(norms > 0, norms, 1.0)[:, None]
    sim = np.clip(Xn @ Xn.T, -1.0, 1.0)
    sim = (sim + sim.T) / 2
    np.fill_diagonal(sim, 1.0)
    return sim


def similarity_matrix(
    groups: Groups,
    names: Sequence[str],
    kind: str = "fisher",
    *,
    eps: float = 1e-12,
    chunk: int | None = None,
    dtype: str = "float32",
    device: str | None = None,
) -> np.ndarray:
    """Validate the embeddings (:func:`check_embeddings`), then compute ``kind`` similarity.

    ``kind`` is ``"fisher"`` (the paper's measure; ``eps``, ``chunk``, ``dtype`` and ``device``
    are passed to :func:`fisher_similarity`) or ``"cosine"`` (a baseline that ignores them).
    Validating against ``names`` first means a bad task is reported by name, not row number.
    """
    if kind not in ("fisher", "cosine"):
        raise ValueError(f"kind must be 'fisher' or 'cosine', got {kind!r}")
    arrays = _group_arrays(groups)
    check_embeddings(arrays, names, nonnegative=(kind == "fisher"))
    if kind == "fisher":
        return _fisher_unchecked(arrays, eps, chunk, dtype, device)
    return cosine_similarity(arrays)


# --------------------------------------------------------------------------------------------
# queries


def top_k(sim: np.ndarray, names: Sequence[str], target: str, k: int) -> list[tuple[str, float]]:
    """The ``k`` tasks most similar to ``target`` (itself excluded), best first.

    Ties are broken by task name so the answer never depends on row order.
    """
    sim, names = check_similarity(sim, names)
    if target not in names:
        raise UnknownTaskError(target, names)
    k = check_k(k, len(names))
    t = names.index(target)
    order = np.lexsort((np.argsort(np.argsort(names)), -sim[t]))  # by similarity, then name
    return [(names[i], float(sim[t, i])) for i in order[order != t][:k].tolist()]


# --------------------------------------------------------------------------------------------
# files


def write_similarity_csv(path: str | os.PathLike, names: Sequence[str], sim: np.ndarray) -> None:
    """Write a square, labelled similarity CSV (header ``task,<names...>``), full precision."""
    sim, names = check_similarity(sim, names)
    asym = float(np.max(np.abs(sim - sim.T)))
    if asym > _SYMMETRY_TOL:
        raise ValueError(f"sim is not symmetric (max |S - S.T| = {asym:.3g}); refusing to write it")
    off = float(np.max(np.abs(np.diag(sim) - 1.0)))
    if off > _SYMMETRY_TOL:
        raise ValueError(f"sim has a diagonal entry {1 - off:.6g} != 1; every task is identical to itself")
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["task", *names])
        for name, row in zip(names, sim):
            w.writerow([name, *(repr(float(x)) for x in row)])


def read_similarity_csv(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """Read a CSV written by :func:`write_similarity_csv`; raise :class:`CorruptFileError` with
    the offending line if it is not a square, symmetric, unit-diagonal, labelled matrix."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.reader(fh) if r]
    where = os.fspath(path)
    if not rows:
        raise CorruptFileError(f"{where}: file is empty; expected a header row 'task,<names...>'")
    header = rows[0]
    if header[0] != "task" or len(header) < 2:
        raise CorruptFileError(
            f"{where}: line 1 must be the header 'task,<task names...>', got {','.join(header)[:80]!r}"
        )
    names = header[1:]
    dups = sorted(x for x, c in Counter(names).items() if c > 1)
    if dups:
        raise CorruptFileError(f"{where}: duplicate task names in the header: {dups}")
    n = len(names)
    if len(rows) - 1 != n:
        raise CorruptFileError(
            f"{where}: the header lists {n} tasks but there are {len(rows) - 1} data rows; "
            "the matrix must be square"
        )
    sim = np.empty((n, n))
    for i, row in enumerate(rows[1:]):
        line = i + 2
        if len(row) != n + 1:
            raise CorruptFileError(f"{where}: line {line} has {len(row) - 1} values, expected {n}")
        if row[0] != names[i]:
            raise CorruptFileError(
                f"{where}: line {line} is labelled {row[0]!r} but column {i + 1} is {names[i]!r}; "
                "rows must list the tasks in header order"
            )
        try:
            sim[i] = [float(x) for x in row[1:]]
        except ValueError as err:
            raise CorruptFileError(f"{where}: line {line}: {err}") from None
    if not np.isfinite(sim).all():
        i = int(np.flatnonzero(~np.isfinite(sim).all(axis=1))[0])
        raise CorruptFileError(f"{where}: line {i + 2} ({names[i]!r}) has NaN or inf values")
    diff = np.abs(sim - sim.T)
    if diff.max() > _SYMMETRY_TOL:
        i, j = np.unravel_index(int(np.argmax(diff)), diff.shape)
        raise CorruptFileError(
            f"{where}: not symmetric: sim[{names[i]!r}, {names[j]!r}] = {sim[i, j]:.6g} but "
            f"sim[{names[j]!r}, {names[i]!r}] = {sim[j, i]:.6g}"
        )
    diag = np.abs(np.diag(sim) - 1.0)
    if diag.max() > _SYMMETRY_TOL:
        i = int(np.argmax(diag))
        raise CorruptFileError(f"{where}: diagonal entry for {names[i]!r} is {sim[i, i]:.6g}, expected 1")
    return list(names), sim
