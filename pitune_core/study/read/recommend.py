"""Recommendations checked on targets they never saw (issue 28, item 5).

The rule is fixed on the main set's protocol rows and evaluated once on the confirmation set's:

- :func:`fix_rule` -- per shots level, the approach to recommend (:data:`RULE_TEXT`);
- :func:`evaluate` -- on the confirmation rows: per target regret against the best approach on that
  target, the mean regret with a bootstrap 95% CI over targets, and the recommended approach against
  target-only (mean difference, CI, wins/ties/losses);
- :func:`check` -- both, plus the same evaluation of the dashboard's rule
  (:func:`pitune_core.study.read.evidence.recommend`, fixed on the main set) and of always choosing
  each approach, for reference.

Rows are protocol results rows (:func:`pitune_core.study.read.evidence.read_protocol_csv`, or
:func:`pitune_core.study.protocol.collect`'s: full data as ``"full"`` or None). Torch-free; the
statistics are :mod:`pitune_core.study.read.stats`' (scipy).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from pitune_core.study.read import stats
from pitune_core.study.read.evidence import summarise

BASELINE = "target-only"

RULE_TEXT = (
    "the recommendation is fixed on the main set, per shots level: the approach with the best mean score over "
    "the main targets (seed-averaged over every planned seed, over the targets every approach of that level has "
    f"complete), except that {BASELINE} is recommended whenever its mean is within the tie margin (|d| <= "
    f"{stats.TIE_POINTS} points) of the best, since an approach that needs a library must beat it by more than "
    "a tie (exact equality: name order); it is then evaluated once on the confirmation set: per target regret = "
    "the score of the best approach on that target minus the recommended approach's (points), the mean regret "
    f"with a bootstrap 95% CI over targets, and the recommended approach against {BASELINE} (mean, CI, "
    "wins/ties/losses with the same tie margin). The dashboard's rule, fixed on the main set, is evaluated "
    "alike beside it.")


def _norm(rows: Sequence[dict]) -> list[dict]:
    """Rows with full data as ``"full"`` (either spelling comes in)."""
    return [{**r, "shots": "full" if r["shots"] in (None, "full") else int(r["shots"])} for r in rows]


def _levels(rows: Sequence[dict]) -> list:
    return sorted({r["shots"] for r in rows}, key=lambda s: (s == "full", 0 if s == "full" else s))


def fix_rule(main_rows: Sequence[dict], tie: float = stats.TIE_POINTS) -> dict:
    """``{shots: {"approach", "mean", "means": {approach: mean}, "targets": n, "tied": [...]}}`` from the
    main set (:data:`RULE_TEXT`); a level where the approaches share no complete target is left out."""
    rows = _norm(main_rows)
    out = {}
    for shots in _levels(rows):
        means, _ = stats.complete_means(rows, shots)
        have = [a for a in sorted(means) if means[a]]
        common = set.intersection(*(set(means[a]) for a in have)) if have else set()
        if not common:
            continue
        ranked = {a: float(np.mean([means[a][t] for t in common])) for a in have}
        best = max(ranked.values())
        tied = sorted(a for a, m in ranked.items() if best - m <= tie)
        pick = BASELINE if BASELINE in tied else max(tied, key=ranked.get)  # tied is sorted: name order on equality
        out[shots] = {"approach": pick, "mean": ranked[pick], "means": ranked, "targets": len(common), "tied": tied}
    return out


def _per_target(means: dict[str, dict[str, float]], a: str) -> list[dict]:
    """Approach ``a``'s regret on each target it is complete on, against the best approach complete there."""
    out = []
    for t in sorted(means.get(a, {})):
        scores = {b: m[t] for b, m in means.items() if t in m}
        top = max(sorted(scores), key=scores.get)
        out.append({"target": t, "score": means[a][t], "best": top, "best_score": scores[top],
                    "regret": scores[top] - means[a][t], "compared": len(scores)})
    return out


def evaluate(approaches: dict, confirm_rows: Sequence[dict], seed: int = 0, tie: float = stats.TIE_POINTS) -> dict:
    """The recommendation ``{shots: approach}`` on the confirmation rows, per shots level:
    ``{"approach", "n", "regret": mean, "regret_ci": (lo, hi), "per_target": [...], "vs_baseline":
    Paired.as_dict() or None}``. A target counts where the recommended approach is complete on it; its
    best approach is the best of those complete on it."""
    rows = _norm(confirm_rows)
    out = {}
    for shots, a in approaches.items():
        means, _ = stats.complete_means(rows, shots)
        per_target = _per_target(means, a)
        regrets = [p["regret"] for p in per_target]
        vs = None
        if a in means and BASELINE in means:
            common = sorted(set(means[a]) & set(means[BASELINE]))
            if common:
                vs = stats.paired([means[a][t] for t in common], [means[BASELINE][t] for t in common], tie=tie,
                                  seed=seed)
        out[shots] = {"approach": a, "n": len(regrets),
                      "regret": float(np.mean(regrets)) if regrets else float("nan"),
                      "regret_ci": stats.bootstrap_ci(regrets, seed=seed), "per_target": per_target,
                      "vs_baseline": vs.as_dict() if vs is not None else None}
    return out


def always(confirm_rows: Sequence[dict]) -> dict:
    """``{shots: {approach: mean regret over its complete confirmation targets}}``: always choosing one
    approach, the reference a fixed rule is held against."""
    rows = _norm(confirm_rows)
    out = {}
    for shots in _levels(rows):
        means, _ = stats.complete_means(rows, shots)
        out[shots] = {a: float(np.mean([p["regret"] for p in _per_target(means, a)])) for a in sorted(means) if means[a]}
    return out


def check(main_rows: Sequence[dict], confirm_rows: Sequence[dict], seed: int = 0) -> dict:
    """:func:`fix_rule` on ``main_rows``, evaluated on ``confirm_rows``; beside it the dashboard's rule
    (fixed on the main set as well) and always choosing each approach."""
    rule = fix_rule(main_rows)
    dash = {}
    for reg in summarise(_norm(main_rows), seed=seed)["regimes"]:
        pick = reg["recommendation"]["approach"]
        if pick is not None:
            dash[reg["shots"]] = pick
    return {"rule": rule, "confirm": evaluate({s: r["approach"] for s, r in rule.items()}, confirm_rows, seed=seed),
            "dashboard": evaluate(dash, confirm_rows, seed=seed), "always": always(confirm_rows)}
