"""Robustness rows summarised (issue 28, item 3): per model, per approach, and paired between approaches.

Plain Python over the rows of :func:`pitune_core.tune.robustness.score_sets` (no torch: the dashboard
may read them). Scores are in points (0-100), as everywhere a difference is shown.

- :func:`robustness_summary`: one model's in-distribution score, its shifted score (the mean over its
  shift sources; None where the target has none) and corrupted score (the mean over corruptions and
  severities), and each corruption's mean.
- :func:`effective_robustness`: shifted - in-distribution and corrupted - in-distribution (the drop a
  model suffers off its own test set; here called effective robustness, the paired quantity the issue
  asks for. It is not Taori et al.'s residual from a fitted in-/out-of-distribution line.)
- :func:`paired_robustness`: the paired difference of one of those numbers between two approaches over
  the targets both have (:func:`pitune_core.study.read.stats.paired`: mean, BCa bootstrap CI over targets
  with scipy.stats.bootstrap, the percentile interval beside it, Wilcoxon p, win/tie/loss).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from pitune_core.spec.vocab import ROBUSTNESS_SETS
from pitune_core.study.read.stats import Paired, paired

IN_DISTRIBUTION, SHIFTED, CORRUPTED = ROBUSTNESS_SETS
#: the numbers :func:`robustness_summary` / :func:`effective_robustness` give, which :func:`paired_robustness` compares
MEASURES = ("in_distribution", "shifted", "corrupted", "shifted_gap", "corrupted_gap")


def _mean_points(rows: Iterable[Mapping]) -> float | None:
    vals = [100.0 * float(r["value"]) for r in rows if r.get("value") is not None]
    return float(np.mean(vals)) if vals else None


def robustness_summary(rows: Sequence[Mapping]) -> dict:
    """One model's rows -> ``{"in_distribution", "shifted", "corrupted", "by_source", "by_corruption"}``
    in points (None where the model has no such score)."""
    ind = [r for r in rows if r["set"] == IN_DISTRIBUTION]
    if len(ind) != 1:
        raise ValueError(f"a model's robustness rows hold one in-distribution row, got {len(ind)}")
    shifted = [r for r in rows if r["set"] == SHIFTED]
    corrupted = [r for r in rows if r["set"] == CORRUPTED]
    by_c: dict[str, list] = {}
    for r in corrupted:
        by_c.setdefault(f"{r['corruption']}@{r['severity']}", []).append(r)
    return {"in_distribution": _mean_points(ind), "shifted": _mean_points(shifted), "corrupted": _mean_points(corrupted),
            "by_source": {r["source"]: _mean_points([r]) for r in shifted if r.get("source")},
            "by_corruption": {k: _mean_points(v) for k, v in by_c.items()},
            "no_shift": next((r["note"] for r in shifted if r.get("value") is None and r.get("note")), None)}


def effective_robustness(rows: Sequence[Mapping]) -> dict:
    """:func:`robustness_summary` plus ``shifted_gap`` = shifted - in-distribution and ``corrupted_gap`` =
    corrupted - in-distribution (points; None where either side is missing)."""
    s = robustness_summary(rows)
    ind = s["in_distribution"]
    for k in ("shifted", "corrupted"):
        s[f"{k}_gap"] = None if s[k] is None or ind is None else s[k] - ind
    return s


def target_measure(models: Sequence[Sequence[Mapping]], measure: str) -> float | None:
    """``measure`` of one target averaged over its models (e.g. one per seed; ``models``: each model's rows);
    None when no model has it."""
    if measure not in MEASURES:
        raise ValueError(f"unknown measure {measure!r}; choose one of {', '.join(MEASURES)}")
    vals = [v for m in models if (v := effective_robustness(m)[measure]) is not None]
    return float(np.mean(vals)) if vals else None


def paired_robustness(a: Mapping[str, Sequence[Sequence[Mapping]]], b: Mapping[str, Sequence[Sequence[Mapping]]],
                      measure: str = "shifted_gap", seed: int = 0) -> Paired | None:
    """``measure`` of approach ``a`` minus approach ``b``, paired over the targets where both have it
    (``a[target]``: that approach's models of the target, e.g. one per seed, each its list of rows;
    :func:`target_measure` averages them); None with fewer than 2 such targets."""
    xa, xb = [], []
    for t in sorted(set(a) & set(b)):
        va, vb = target_measure(a[t], measure), target_measure(b[t], measure)
        if va is not None and vb is not None:
            xa.append(va)
            xb.append(vb)
    if len(xa) < 2:
        return None
    return paired(xa, xb, seed=seed)
