"""Every transferability predictor as a task graph the dashboard can draw.

The ground-truth study (``pitune transfer-study``, stage ``predictors``) logs, for each predictor,
each target and each amount of target data, one row: a score per source. Only three of the
predictors are task *embeddings* with a similarity matrix of their own (Fisher, expert weights,
data); the others (LogME, the source expert's own accuracy on the target, same-modality, ...) only
rank sources for a target. To compare them on the Graph tab they are turned into one matrix each:
row ``t`` is the predictor's ranking of the sources for target ``t``, as a percentile in [0, 1]
(1 = the source it ranks first; ties share their average rank), averaged over the predictor seeds.
Percentiles make predictors with unrelated scales (log-likelihoods, LogME evidence, 0/1) drawable
on one axis while keeping what the quality metrics judge: the order. A task graph (and the study's
similarity files) is symmetric, so the drawn matrix is the mean of the two directions: how highly
t ranks s as a source and s ranks t. The directed rows stay in ``predictors.jsonl``; the quality
metrics and every few-shot run use directed rows (a run recomputes its target's row from its
own shots, :func:`pitune_core.tune.run._predictor_ranking`).

:func:`write_predictor_graphs` writes ``predict/<method>/predictor-<name>/`` with the same files
as an embedding (similarity.csv, graph.json, layout.csv), so the reader, the Graph tab, the top-k
list and the runs launched from the dashboard treat a predictor like any embedding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.stats import rankdata

from pitune_core.paths import StudyPaths
from pitune_core.predict.quality import PREDICTOR_NAMES, PREDICTOR_PREFIX
from pitune_core.study.outputs import node_attrs, write_graph_files
from pitune_core.study.transfer import TransferPlan, predictor_records

def percentiles(scores) -> np.ndarray:
    """Each score's percentile in its row's ranking: 1 = ranked first, 0 = last; ties share their
    average rank. A row needs at least two scores."""
    v = np.asarray(scores, dtype=np.float64)
    return (rankdata(v, method="average") - 1) / (len(v) - 1)


def percentile_rows(rows: list[tuple[str, list[str], list[float]]], tasks: list[str]) -> np.ndarray:
    """``(target, sources, scores)`` rows (several per target: averaged) → a (n, n) matrix over
    ``tasks``: entry (t, s) is the percentile of source s in t's ranking (1 = first), diagonal 1.
    A target without rows raises ValueError (a graph needs every task's row)."""
    n = len(tasks)
    acc = np.zeros((n, n))
    count = np.zeros(n)
    for target, sources, scores in rows:
        i = tasks.index(target)
        cols = [tasks.index(s) for s in sources if s in tasks and s != target]
        vals = np.array([scores[sources.index(tasks[j])] for j in cols], dtype=np.float64)
        if len(cols) < 2 or not np.isfinite(vals).all():
            raise ValueError(f"the row for {target} has {len(cols)} usable sources or non-finite scores")
        acc[i, cols] += percentiles(vals)
        count[i] += 1
    missing = [tasks[i] for i in range(n) if count[i] == 0]
    if missing:
        raise ValueError(f"no rows for {', '.join(missing)}")
    S = acc / count[:, None]
    np.fill_diagonal(S, 1.0)
    return S


def write_predictor_graphs(plan: TransferPlan, out: str | Path, study: str | Path, shots: int | None = None,
                           key: str | None = None) -> list[str]:
    """Write one graph per predictor logged in ``out/predictors.jsonl`` at ``shots`` per class of
    target data (None: full data), into ``study``'s ``predict/<plan.method>/predictor-<name>/``.

    ``key``: only rows of this predictor configuration (:func:`~pitune_core.study.transfer.predictor_records`,
    the same rule as the quality table). Predictors missing a target's row are skipped (returned
    names are those written)."""
    recs = [r for r in predictor_records(out, key)[0] if r.get("shots") == shots]
    written = []
    for p in PREDICTOR_NAMES:
        rows = [(r["target"], r["sources"], r["row"]) for r in recs if r["predictor"] == p and r["target"] in plan.tasks]
        if not rows:
            continue
        try:
            S = percentile_rows(rows, list(plan.tasks))
        except ValueError:
            continue  # incomplete: drawn once every target has its row
        d = StudyPaths(study).embedding_dir(plan.method, PREDICTOR_PREFIX + p)
        size = "full data" if shots is None else f"{shots} shots per class"
        write_graph_files(d, list(plan.tasks), (S + S.T) / 2, node_attrs(Path(study), plan.method, list(plan.tasks)),
                          note=f"Predictor {p} ({plan.name}, target data: {size}): each target's ranking of its "
                               f"sources as percentiles (1 = ranked first), mean over seeds, symmetrised (mean of "
                               f"both directions).")
        written.append(p)
    return written
