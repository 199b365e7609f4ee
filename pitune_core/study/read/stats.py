"""Statistics of a pre-registered comparison: spreads, paired differences, CIs, tests, win/tie/loss.

Everything here is arrays in, numbers out (scipy.stats does the work), so the report is a plain
function of the logged rows:

- :func:`mean_std` -- mean and sample standard deviation (ddof=1; NaN for fewer than 2 values,
  never a misleading "± 0.0");
- :func:`paired` -- the paired difference of two approaches over targets: mean, bootstrap 95% CI
  over targets (``scipy.stats.bootstrap``, BCa, seeded; the percentile interval beside it as a
  sensitivity check, :attr:`Paired.fragile` where they disagree on 0), Wilcoxon signed-rank p-value
  (``scipy.stats.wilcoxon``, two-sided) and win/tie/loss counts (a tie is ``|d| <= tie``);
- :func:`target_means` -- the seed-averaged score of every (target, approach) of one regime, the
  unit the paired statistics are computed over (targets, not seeds, are the independent units);
- :func:`report_section` -- the Markdown section a REPORT.md includes.

Scores are in points (0-100) wherever a difference is shown.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

TIE_POINTS = 0.5  # |difference| at or below this many points counts as a tie
CI_LEVEL = 0.95
N_RESAMPLES = 9999


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample std with ddof=1); std is NaN for fewer than two values."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return float("nan"), float("nan")
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else float("nan")


@dataclass
class Paired:
    """The paired comparison ``a - b`` over n targets (points)."""

    n: int
    mean: float
    ci_low: float
    ci_high: float
    p_wilcoxon: float
    wins: int
    ties: int
    losses: int
    pct_low: float = float("nan")   # the plain percentile bootstrap interval: a sensitivity check of
    pct_high: float = float("nan")  # the BCa one above (same resamples); reported, never the rule

    @property
    def fragile(self) -> bool:
        """The two intervals disagree on whether 0 is excluded (a verdict that rests on the CI method)."""
        return fragile(self.ci_low, self.ci_high, self.pct_low, self.pct_high)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def fragile(ci_low, ci_high, pct_low, pct_high) -> bool:
    """BCa (the rule) and the percentile interval disagree on excluding 0; undefined bounds exclude nothing."""
    def excludes(lo, hi):
        return (isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and math.isfinite(lo)
                and math.isfinite(hi) and (lo > 0 or hi < 0))
    return excludes(ci_low, ci_high) != excludes(pct_low, pct_high)


def pending_others(means: dict[str, dict[str, float]], main: str, candidates: Iterable[str]) -> list[str]:
    """The candidates not yet complete on every target ``main`` is complete on (so not yet eligible
    as :func:`best_other`); [] while ``main`` has no complete target."""
    mine = set(means.get(main, {}))
    return [c for c in candidates if c != main and mine and not mine <= set(means.get(c, {}))]


def bootstrap_ci(d: Sequence[float], level: float = CI_LEVEL, seed: int = 0,
                 n_resamples: int = N_RESAMPLES, method: str = "BCa") -> tuple[float, float]:
    """Bootstrap CI of the mean of ``d`` (BCa, falling back to percentile when BCa is undefined; or
    ``method="percentile"``); NaN for n < 2."""
    from scipy.stats import bootstrap

    d = np.asarray(d, dtype=float)
    if d.size < 2:
        return float("nan"), float("nan")
    if np.ptp(d) == 0:  # every resample has the same mean
        return float(d[0]), float(d[0])
    for method in (("BCa", "percentile") if method == "BCa" else (method,)):
        res = bootstrap((d,), np.mean, confidence_level=level, n_resamples=n_resamples, method=method,
                        rng=np.random.default_rng(seed))
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if math.isfinite(lo) and math.isfinite(hi):
            return lo, hi
    return float("nan"), float("nan")


def wilcoxon_p(d: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value of ``d`` against 0 (1.0 when every d is 0; NaN for n < 2)."""
    from scipy.stats import wilcoxon

    d = np.asarray(d, dtype=float)
    if d.size < 2:
        return float("nan")
    if np.all(d == 0):
        return 1.0
    return float(wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)


def win_tie_loss(d: Sequence[float], tie: float = TIE_POINTS) -> tuple[int, int, int]:
    d = np.asarray(d, dtype=float)
    return int((d > tie).sum()), int((np.abs(d) <= tie).sum()), int((d < -tie).sum())


def paired(a: Sequence[float], b: Sequence[float], tie: float = TIE_POINTS, seed: int = 0) -> Paired:
    """``a - b`` paired over targets (same order): mean, bootstrap CI, Wilcoxon p, win/tie/loss."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired comparison needs equal lengths, got {a.shape} and {b.shape}")
    d = a - b
    lo, hi = bootstrap_ci(d, seed=seed)
    plo, phi = bootstrap_ci(d, seed=seed, method="percentile")
    w, t, l = win_tie_loss(d, tie)
    return Paired(int(d.size), float(d.mean()) if d.size else float("nan"), lo, hi, wilcoxon_p(d), w, t, l, plo, phi)


# ----------------------------------------------------------------------------- over logged rows

def _points(r: dict) -> float:
    return 100.0 * float(r["score"])


def target_means(rows: Iterable[dict], shots) -> dict[str, dict[str, float]]:
    """``{approach: {target: mean score over seeds (points)}}`` for one shots regime (done rows only)."""
    acc: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in rows:
        if r.get("status", "done") == "done" and r["shots"] == shots:
            acc[(r["approach"], r["target"])].append(_points(r))
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for (a, t), v in acc.items():
        out[a][t] = float(np.mean(v))
    return dict(out)


def complete_means(rows: Sequence[dict], shots) -> tuple[dict[str, dict[str, float]], dict[str, int]]:
    """``({approach: {target: seed-averaged points}}, {approach: planned targets})`` for one regime,
    keeping only targets whose every planned seed of that approach is done (rows carry ``status``;
    rows without one count as done). A study that is still filling is thus never compared on a
    seed-average of some seeds for one approach and of all seeds for another."""
    mine = [r for r in rows if r["shots"] == shots]
    planned: dict[tuple[str, str], int] = defaultdict(int)
    done: dict[tuple[str, str], int] = defaultdict(int)
    for r in mine:
        planned[(r["approach"], r["target"])] += 1
        done[(r["approach"], r["target"])] += r.get("status", "done") == "done"
    full = {k for k in planned if done[k] == planned[k]}
    means = target_means([r for r in mine if (r["approach"], r["target"]) in full], shots)
    n_targets: dict[str, int] = defaultdict(int)
    for a, _t in planned:
        n_targets[a] += 1
    return means, dict(n_targets)


def compare_to(means: dict[str, dict[str, float]], a: str, b: str, seed: int = 0) -> Paired | None:
    """``a - b`` over the targets both have; None when either is missing."""
    if a not in means or b not in means:
        return None
    common = sorted(set(means[a]) & set(means[b]))
    if not common:
        return None
    return paired([means[a][t] for t in common], [means[b][t] for t in common], seed=seed)


def best_other(means: dict[str, dict[str, float]], candidates: Sequence[str], over: Iterable[str] | None = None) -> str | None:
    """The candidate with the highest mean over targets (the strongest competitor; chosen on the
    reported scores, which can only favour it).

    ``over`` (the main approach's complete targets): only candidates complete on every one of them
    compete, ranked by their mean over exactly those targets, so a candidate that has run on two
    easy targets so far cannot displace one measured on all of them; when no candidate is complete
    there yet, every candidate competes on its own complete targets (a provisional regime)."""
    have = [c for c in candidates if c in means and means[c]]
    if over is not None:
        over = sorted(set(over))
        full = [c for c in have if over and all(t in means[c] for t in over)]
        if full:
            return max(full, key=lambda c: (np.mean([means[c][t] for t in over]), c))
    return max(have, key=lambda c: (np.mean(list(means[c].values())), c)) if have else None


def _fmt(x: float, nd: int = 1) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:+.{nd}f}" if nd < 0 else f"{x:.{nd}f}"


def _shots_label(s) -> str:
    return "full" if s is None else str(s)


def report_section(rows: Sequence[dict], main: str = "pi-tuning", baseline: str = "target-only",
                   others: Sequence[str] = (), planned: int | None = None, title: str = "Few-shot comparison",
                   ablations: Sequence[str] = ()) -> str:
    """Markdown: approach × shots (mean ± std over runs, ddof=1, n), then the paired differences
    of ``main`` against ``baseline``, against the best of ``others`` and against each of
    ``ablations`` (where planned) per regime, with bootstrap 95% CIs over targets, Wilcoxon p and
    win/tie/loss. Missing or failed runs are counted, not hidden."""
    rows = list(rows)
    done = [r for r in rows if r.get("status", "done") == "done"]
    shots_list = sorted({r["shots"] for r in rows}, key=lambda s: (s is None, s or 0))
    approaches = sorted({r["approach"] for r in rows}, key=lambda a: (a != main, a != baseline, a))
    lines = [f"### {title}", ""]
    n_missing = len(rows) - len(done)
    lines.append(f"{len(done)} of {planned if planned is not None else len(rows)} planned runs done"
                 + (f"; {n_missing} missing or failed (shown as such, never dropped)" if n_missing else "") + ".")
    lines += ["", "Score in points, mean ± std (ddof=1) over targets × seeds, n runs in brackets.", ""]
    lines.append("| approach | " + " | ".join(_shots_label(s) for s in shots_list) + " |")
    lines.append("|---|" + "---:|" * len(shots_list))
    for a in approaches:
        cells = []
        for s in shots_list:
            v = [_points(r) for r in done if r["approach"] == a and r["shots"] == s]
            planned_n = sum(1 for r in rows if r["approach"] == a and r["shots"] == s)
            if not planned_n:
                cells.append("")
                continue
            m, sd = mean_std(v)
            cells.append(f"{_fmt(m)} ± {_fmt(sd)} ({len(v)}" + (f"/{planned_n}" if len(v) != planned_n else "") + ")")
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    lines += ["", f"Paired differences over targets (seed-averaged over every planned seed; a target enters once all "
              f"its planned seeds are done for both approaches; points): {main} minus the other approach, "
              f"bootstrap {int(CI_LEVEL * 100)}% CI over targets (BCa, the rule; the plain percentile interval "
              f"beside it as a sensitivity check, \"fragile\" where the two disagree on excluding 0), two-sided "
              f"Wilcoxon signed-rank p, wins/ties/losses (tie: |d| ≤ {TIE_POINTS}). The best other transfer "
              f"approach is chosen among those complete on every target {main} is complete on.", "",
              "| shots | versus | n targets | mean diff | 95% CI | percentile CI | Wilcoxon p | W/T/L |",
              "|---|---|---:|---:|---|---|---:|---|"]
    pending = []
    for s in shots_list:
        means, _ = complete_means(rows, s)
        best = best_other(means, [o for o in others if o != main], over=means.get(main))
        here = {r["approach"] for r in rows if r["shots"] == s}
        late = pending_others(means, main, [o for o in others if o in here])
        if late:
            pending.append(f"{_shots_label(s)} shots: {', '.join(late)}")
        for label, b in ((baseline, baseline), (f"best other: {best}", best),
                         *((f"ablation: {a}", a) for a in ablations if a in here)):
            if b is None:
                continue
            p = compare_to(means, main, b)
            if p is None:
                lines.append(f"| {_shots_label(s)} | {label} | 0 | – | – | – | – | – |")
                continue
            lines.append(f"| {_shots_label(s)} | {label} | {p.n} | {p.mean:+.1f} | [{_fmt(p.ci_low)}, {_fmt(p.ci_high)}] | "
                         f"[{_fmt(p.pct_low)}, {_fmt(p.pct_high)}]{' fragile' if p.fragile else ''} | "
                         f"{_fmt(p.p_wilcoxon, 3)} | {p.wins}/{p.ties}/{p.losses} |")
    if pending:
        lines += ["", "Not yet complete on those targets, so not yet candidates for the best other: "
                  + "; ".join(pending) + "."]
    return "\n".join(lines + [""])
