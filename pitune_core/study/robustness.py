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
- :func:`robustness_table`: a pre-registered comparison's robustness, regime by regime (what the report
  and the dashboard's compare tab show): per approach the mean ± std (ddof=1) over targets of each of
  :data:`MEASURES`, and π-Tuning minus every other approach, paired over targets, for the shifted and
  corrupted scores and both gaps. π-Tuning is the reference, as in the comparison itself
  (:func:`pitune_core.study.read.evidence.summarise`): the issue's goals are stated for π-Tuning
  against target-only and against every other approach, so every approach, target-only included, is
  compared with π-Tuning, and a positive difference means π-Tuning holds up better.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from pitune_core.spec.vocab import ROBUSTNESS_SETS
from pitune_core.study.read.evidence import BASELINE, MAIN, label, regime_of
from pitune_core.study.read.stats import Paired, mean_std, paired

IN_DISTRIBUTION, SHIFTED, CORRUPTED = ROBUSTNESS_SETS
#: the numbers :func:`robustness_summary` / :func:`effective_robustness` give, which :func:`paired_robustness` compares
MEASURES = ("in_distribution", "shifted", "corrupted", "shifted_gap", "corrupted_gap")
MEASURE_LABELS = {"in_distribution": "in-distribution", "shifted": "shifted", "corrupted": "corrupted",
                  "shifted_gap": "shifted − in-distribution", "corrupted_gap": "corrupted − in-distribution"}
#: the measures :func:`robustness_table` pairs between approaches (in-distribution is the comparison's own
#: score, paired there)
PAIRED_MEASURES = ("shifted", "corrupted", "shifted_gap", "corrupted_gap")


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


def _shots_key(shots) -> tuple:
    return (1, 0) if shots in (None, "full") else (0, int(shots))


def robustness_table(runs: Sequence[Mapping], rows: Sequence[Mapping], seed: int = 0) -> dict:
    """A comparison's robustness per regime: ``runs`` its results rows (every planned run, with
    ``status``; :func:`pitune_core.study.read.evidence.read_protocol_csv`), ``rows`` its robustness rows
    (:func:`pitune_core.study.read.results.read_robustness`). A target counts for an approach when every
    planned seed of it in the regime is scored (as the comparison's own numbers: a half-scored seed set
    is never averaged with a full one); a target's value is the mean over its seeds (the unit, as
    everywhere, is the target).

    Returns ``{"runs_scored", "regimes": [...]}``, a regime with at least one scored run:
    ``{"regime", "shots", "runs_done", "runs_scored", "approaches", "diffs"}``; an approach row:
    ``{"approach", "label", "planned_targets", "n_targets" (complete ones), and per measure of
    :data:`MEASURES` ``{"mean", "std", "n"}``}`` (points; std ddof=1, NaN for one target; n targets with
    that measure: a target outside every shift group has no shifted score); a diff row:
    :class:`~pitune_core.study.read.stats.Paired`'s fields for ``a`` (π-Tuning) minus ``b`` on
    ``measure`` (n 0 and NaN where fewer than 2 targets have it for both), with ``regime`` and ``label``."""
    models: dict[tuple, list] = {}
    for r in rows:
        models.setdefault((r["target"], r["approach"], r["shots"], r["seed"]), []).append(r)
    out: dict = {"runs_scored": len(models), "regimes": []}
    for shots in sorted({k[2] for k in models}, key=_shots_key):
        mine = [r for r in runs if r["shots"] == shots]
        planned: dict[tuple[str, str], int] = {}
        for r in mine:
            planned[(r["approach"], r["target"])] = planned.get((r["approach"], r["target"]), 0) + 1
        scored: dict[str, dict[str, list]] = {}
        for (t, a, s, _seed), m in models.items():
            if s == shots:
                scored.setdefault(a, {}).setdefault(t, []).append(m)
        complete = {a: {t: ms for t, ms in per.items() if len(ms) == planned.get((a, t))} for a, per in scored.items()}
        order = sorted(complete, key=lambda a: (a != MAIN, a != BASELINE, a))
        table = []
        for a in order:
            row = {"approach": a, "label": label(a), "planned_targets": sum(1 for (b, _t) in planned if b == a),
                   "n_targets": len(complete[a])}
            for m in MEASURES:
                vals = [v for ms in complete[a].values() if (v := target_measure(ms, m)) is not None]
                mean, sd = mean_std(vals)
                row[m] = {"mean": mean, "std": sd, "n": len(vals)}
            table.append(row)
        diffs = []
        if MAIN in complete:
            for b in [b for b in order if b != MAIN]:
                for m in PAIRED_MEASURES:
                    p = paired_robustness(complete[MAIN], complete[b], m, seed=seed)
                    d = p.as_dict() if p is not None else {"n": 0, "mean": float("nan"), "ci_low": float("nan"),
                                                           "ci_high": float("nan"), "p_wilcoxon": float("nan"),
                                                           "wins": 0, "ties": 0, "losses": 0}
                    d.update(regime=regime_of(shots), a=MAIN, b=b, measure=m, label=f"{label(MAIN)} − {label(b)}")
                    diffs.append(d)
        out["regimes"].append({"regime": regime_of(shots), "shots": shots,
                               "runs_done": sum(r.get("status") == "done" for r in mine),
                               "runs_scored": sum(len(x) for per in scored.values() for x in per.values()),
                               "approaches": table, "diffs": diffs})
    return out
