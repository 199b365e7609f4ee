"""How well does a predictor predict transfer, and how well *could* any predictor do?

A predictor gives, for one target, a score per candidate source (higher = expected to transfer
better). The ground truth is the measured gain of every (target, source) pair, per seed. This
module scores a predictor's row against the seed-averaged gains with the numbers a user cares
about (rank correlation, whether the best source is in the predicted top-k, NDCG@3, and the regret
of taking the predicted best instead of the actual best), and it measures how much of that is
achievable at all: the gains are noisy, so even a perfect predictor cannot reach Spearman 1
against a finite number of seeds.

Noise ceiling. The seeds are split into two halves (every balanced split); per target, the
Spearman correlation between the two half-averages is the split-half reliability ``r_half``; the
Spearman–Brown formula ``2 r / (1 + r)`` extrapolates it to the full seed average (``reliability``).
A noise-free predictor correlates with the measured average at most ``sqrt(reliability)``: that
is the Spearman ceiling. For the other metrics (hits, NDCG, regret) there is no closed form, so
their ceiling is the *split-half oracle*: one half's average used as the predictor of the other
half (averaged over splits and both directions). It is measured with half the seeds, so it is a
conservative (low) ceiling.

Everything is plain numpy in, dicts out; bootstrap CIs over targets use ``scipy.stats.bootstrap``.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np

# every predictor's name (the torch-free list predictors.py checks itself against), the prefix of a
# predictor's graph folder and the parser of an embedding's name are the spec's (re-exported here)
from pitune_core.spec.vocab import (PREDICTOR_EMBEDDINGS, PREDICTOR_NAMES, PREDICTOR_PREFIX, QUALITY_K,  # noqa: F401
                                    predictor_of)

METRICS = ("spearman", "top1_hit", "top3_hit", "ndcg3", "regret")
#: lower is better for these (their "fraction of the ceiling" is reported as an excess instead)
LOWER_IS_BETTER = ("regret",)


def best_predictor(quality: Mapping, size: str, metric: str = "spearman",
                   among: Sequence[str] | None = None) -> str | None:
    """The predictor with the highest mean ``metric`` at target data ``size`` of a ground truth's
    quality table (``quality.json``'s ``table``; regret: the lowest), only those in ``among`` when
    given; ties by name; None when no predictor has a defined mean."""
    preds = (quality.get("table") or {}).get(size) or {}
    have = [(p, ((v.get("summary") or {}).get(metric) or {}).get("mean")) for p, v in preds.items()
            if among is None or p in among]
    have = [(p, m) for p, m in have if isinstance(m, (int, float)) and math.isfinite(m)]
    if not have:
        return None
    sign = 1.0 if metric in LOWER_IS_BETTER else -1.0
    return min(have, key=lambda pm: (sign * pm[1], pm[0]))[0]


def headline(quality: Mapping) -> tuple[str, str] | None:
    """``(size, predictor)``: the best predictor by Spearman at the smallest few-shot size of a
    quality table (the few-shot protocol's question, and the dashboard's default); None without
    a few-shot size or a defined mean."""
    few = sorted((s for s in (quality.get("table") or {}) if s != "full"), key=lambda s: int(s.split("-")[0]))
    best = best_predictor(quality, few[0]) if few else None
    return (few[0], best) if best else None


def fullest_plan(qualities: Mapping[str, Mapping]) -> str | None:
    """The ground truth with the most targets scored (ties: the later name) among ``{plan: quality}``."""
    if not qualities:
        return None
    return max(qualities, key=lambda n: (max((v["n_targets"] for t in qualities[n]["table"].values() for v in t.values()),
                                             default=0), n))



# ----------------------------------------------------------------------------- one target

def rank_sources(pred: np.ndarray, names: Sequence[str]) -> list[int]:
    """Indices of the sources, highest prediction first; ties broken by name (deterministic)."""
    pred = np.asarray(pred, dtype=np.float64)
    return sorted(range(len(pred)), key=lambda j: (-pred[j], names[j]))


def ndcg_at_k(pred: np.ndarray, gain: np.ndarray, names: Sequence[str], k: int = QUALITY_K) -> float:
    """NDCG@k with relevance = gain minus the worst gain among the candidates (so relevance >= 0).

    NaN when every candidate has the same gain (nothing to rank)."""
    gain = np.asarray(gain, dtype=np.float64)
    rel = gain - gain.min()
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.sort(rel)[::-1][:k]
    idcg = float(np.sum(ideal * disc[: len(ideal)]))
    if idcg <= 0:
        return float("nan")
    top = rank_sources(pred, names)[:k]
    return float(np.sum(rel[top] * disc[: len(top)]) / idcg)


def target_quality(pred: np.ndarray, gain: np.ndarray, names: Sequence[str], k: int = QUALITY_K) -> dict:
    """Every metric of one predictor row against one target's gains (NaN gains are dropped).

    ``spearman``: rank correlation (0 when either side is constant); ``top1_hit`` / ``top{k}_hit``:
    1 if an actually-best source (ties included) is the predicted best / among the predicted
    top-k; ``ndcg3``: :func:`ndcg_at_k` with k=3; ``regret``: best gain minus the gain of the
    predicted best (accuracy points, >= 0)."""
    from scipy.stats import spearmanr  # lazy: the dashboard imports this module

    pred = np.asarray(pred, dtype=np.float64)
    gain = np.asarray(gain, dtype=np.float64)
    if pred.shape != gain.shape or pred.ndim != 1:
        raise ValueError(f"pred and gain must be two vectors of the same length, got {pred.shape} and {gain.shape}")
    if not np.isfinite(pred).all():
        raise ValueError("the predictor returned NaN or inf")
    keep = ~np.isnan(gain)
    if keep.sum() < 2:
        raise ValueError("need the measured gain of at least 2 sources")
    pred, gain, names = pred[keep], gain[keep], [n for n, m in zip(names, keep) if m]
    rho = float(spearmanr(pred, gain).statistic) if np.ptp(pred) > 0 and np.ptp(gain) > 0 else 0.0
    order = rank_sources(pred, names)
    best = set(np.flatnonzero(gain == gain.max()).tolist())
    return {"spearman": rho, "top1_hit": float(order[0] in best), f"top{k}_hit": float(bool(best & set(order[:k]))),
            "ndcg3": ndcg_at_k(pred, gain, names, 3), "regret": float(gain.max() - gain[order[0]]),
            "predicted_best": names[order[0]], "best": names[int(np.argmax(gain))],
            "predicted_top": [names[j] for j in order[:k]]}


def within_group_spearman(pred: np.ndarray, gain: np.ndarray, groups: Sequence[str], group: str) -> float:
    """Spearman of a predictor row against one target's gains over the sources in ``group`` only
    (e.g. the target's own modality): what the predictor knows beyond the group. NaN with fewer than
    3 measured sources in the group; 0 when either side is constant there (as :func:`target_quality`)."""
    from scipy.stats import spearmanr

    pred, gain = np.asarray(pred, dtype=np.float64), np.asarray(gain, dtype=np.float64)
    if not (pred.shape == gain.shape == (len(groups),)):
        raise ValueError(f"pred, gain and groups must have one entry per source, got {pred.shape}, {gain.shape} "
                         f"and {len(groups)}")
    keep = np.array([g == group for g in groups]) & ~np.isnan(gain)
    if keep.sum() < 3:
        return float("nan")
    x, y = pred[keep], gain[keep]
    return float(spearmanr(x, y).statistic) if np.ptp(x) > 0 and np.ptp(y) > 0 else 0.0


def summarise_within(per_target: Mapping[str, float], seed: int = 0) -> dict:
    """Mean over targets (those with a defined value) of :func:`within_group_spearman`, with its
    bootstrap CI (None where undefined: no target, or one)."""
    vals = [v for v in per_target.values() if v is not None and np.isfinite(v)]
    return {"mean": float(np.mean(vals)) if vals else None,
            "ci": bootstrap_ci(vals, seed) if len(vals) > 1 else (None, None), "n_targets": len(vals)}


# ----------------------------------------------------------------------------- reliability

def _halves(n_seeds: int, max_splits: int = 64, seed: int = 0) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Every split of the seeds into two halves (sizes floor/ceil of n/2), each split once; with
    more than ``max_splits`` of them, ``max_splits`` distinct random ones (seeded)."""
    if n_seeds < 2:
        raise ValueError(f"split-half reliability needs at least 2 seeds, got {n_seeds}")
    h = n_seeds // 2
    if math.comb(n_seeds, h) > 2 * max_splits:
        rng, picks = np.random.default_rng(seed), {}
        while len(picks) < max_splits:
            a = tuple(sorted(rng.choice(n_seeds, h, replace=False).tolist()))
            b = tuple(i for i in range(n_seeds) if i not in a)
            picks.setdefault(frozenset([a, b]) if len(a) == len(b) else (a, b), (a, b))
        return list(picks.values())
    out, seen = [], set()
    for a in itertools.combinations(range(n_seeds), h):
        b = tuple(i for i in range(n_seeds) if i not in a)
        key = frozenset([a, b]) if len(a) == len(b) else (a, b)
        if key not in seen:
            seen.add(key)
            out.append((a, b))
    return out


def spearman_brown(r: float | np.ndarray, factor: float = 2.0):
    """Reliability of an average of ``factor`` times as many seeds, from reliability ``r`` (clipped
    to [-1, 1]: a negative split-half correlation extrapolates to nonsense below -1)."""
    r = np.asarray(r, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.clip(factor * r / (1 + (factor - 1) * r), -1.0, 1.0)
    return float(out) if out.ndim == 0 else out


def seed_reliability(per_seed: np.ndarray, targets: Sequence[str], sources: Sequence[str], k: int = QUALITY_K) -> dict:
    """Split-half reliability of a gain tensor ``per_seed[s, i, j]`` (seed, target, source; NaN = missing).

    Per target: ``r_half`` (mean over splits of Spearman(half A mean, half B mean)), its
    Spearman–Brown ``reliability`` for the full seed average, the Spearman ``ceiling``
    sqrt(max(reliability, 0)), and the split-half oracle value of every other metric. Overall:
    the means over targets, plus ``reliability_of_mean_r``: Spearman–Brown of the mean ``r_half``.
    """
    from scipy.stats import spearmanr  # lazy: the dashboard imports this module

    G = np.asarray(per_seed, dtype=np.float64)
    if G.ndim != 3 or G.shape[1] != len(targets) or G.shape[2] != len(sources):
        raise ValueError(f"per_seed must be (n_seeds, {len(targets)}, {len(sources)}), got {G.shape}")
    splits = _halves(G.shape[0])
    per_target = {}
    for i, t in enumerate(targets):
        cols = [j for j in range(len(sources)) if not np.isnan(G[:, i, j]).any()]
        if len(cols) < 3:
            continue
        names = [sources[j] for j in cols]
        rs, oracle = [], {m: [] for m in METRICS}
        for a, b in splits:
            ma, mb = G[list(a)][:, i, cols].mean(0), G[list(b)][:, i, cols].mean(0)
            rs.append(float(spearmanr(ma, mb).statistic) if np.ptp(ma) > 0 and np.ptp(mb) > 0 else 0.0)
            for p, g in ((ma, mb), (mb, ma)):
                q = target_quality(p, g, names, k)
                for m in METRICS:
                    oracle[m].append(q[m if m != "top3_hit" else f"top{k}_hit"])
        r_half = float(np.mean(rs))
        rel = spearman_brown(r_half)
        per_target[t] = {"r_half": r_half, "reliability": rel, "ceiling_spearman": float(np.sqrt(max(rel, 0.0))),
                         **{f"oracle_{m}": float(np.nanmean(v)) for m, v in oracle.items()}}
    if not per_target:
        raise ValueError("no target has the gains of at least 3 sources in every seed")
    mean = {key: float(np.nanmean([v[key] for v in per_target.values()])) for key in next(iter(per_target.values()))}
    return {"n_seeds": int(G.shape[0]), "n_splits": len(splits), "per_target": per_target, "mean": mean,
            "reliability_of_mean_r": spearman_brown(mean["r_half"])}


def seeds_for_reliability(r_single: Sequence[float], goal: float = 0.8, max_seeds: int = 64) -> int:
    """The fewest seeds whose mean, averaged over targets, reaches Spearman–Brown reliability ``goal``.

    ``r_single``: each target's single-seed reliability (a pilot's split-half correlation with one seed
    per half, e.g. :func:`seed_reliability` on a 2-seed pilot, its ``r_half``). A target whose ``r_single``
    is <= 0 counts as reliability 0 at every seed count (more seeds cannot rescue a ranking with no
    signal); ``max_seeds`` is returned when no count up to it reaches the goal (the plan then says so)."""
    r = np.asarray(r_single, dtype=np.float64)
    if r.size == 0 or not (0 < goal < 1):
        raise ValueError("need at least one target's reliability and a goal in (0, 1)")
    r = np.where(r > 0, r, 0.0)
    for n in range(1, max_seeds + 1):
        if float(np.mean(spearman_brown(r, float(n)))) >= goal:
            return n
    return max_seeds


# ----------------------------------------------------------------------------- bootstrap

def bootstrap_ci(values: Sequence[float], seed: int = 0, n_resamples: int = 2000, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean over targets (NaNs dropped; (nan, nan) with < 2 values)."""
    from scipy.stats import bootstrap  # lazy: the dashboard imports this module

    v = np.asarray([x for x in values if not np.isnan(x)], dtype=np.float64)
    if len(v) < 2:
        return float("nan"), float("nan")
    if np.ptp(v) == 0:
        return float(v[0]), float(v[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = bootstrap((v,), np.mean, n_resamples=n_resamples, confidence_level=confidence, method="percentile",
                        random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def paired_ci(num: Sequence[float], den: Sequence[float], stat: str = "ratio", seed: int = 0,
              n_resamples: int = 2000, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI over targets (resampled in pairs) of mean(num)/mean(den)
    (``stat='ratio'``) or of mean(num - den) (``stat='difference'``)."""
    from scipy.stats import bootstrap  # lazy: the dashboard imports this module

    a, b = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    if len(a) < 2:
        return float("nan"), float("nan")
    if stat == "ratio":
        def f(x, y, axis=-1):
            return np.mean(x, axis=axis) / np.mean(y, axis=axis)
    elif stat == "difference":
        def f(x, y, axis=-1):
            return np.mean(x - y, axis=axis)
    else:
        raise ValueError(f"stat must be 'ratio' or 'difference', got {stat!r}")
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        v = float(f(a, b))
        return v, v
    with warnings.catch_warnings(), np.errstate(all="ignore"):  # a resample whose ceiling mean is 0: inf/nan
        warnings.simplefilter("ignore")
        res = bootstrap((a, b), f, paired=True, vectorized=True, n_resamples=n_resamples, confidence_level=confidence,
                        method="percentile", random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


# ----------------------------------------------------------------------------- one predictor

def predictor_quality(rows: Mapping[str, np.ndarray], per_seed: np.ndarray, targets: Sequence[str],
                      sources: Sequence[str], k: int = QUALITY_K, reliability: dict | None = None, seed: int = 0) -> dict:
    """Score one predictor: ``rows[target]`` is its prediction for every source (in ``sources``
    order; the target itself, if among the sources, is ignored), ``per_seed`` the gain tensor of
    :func:`seed_reliability`. Returns per-target metrics, their means with bootstrap CIs, and
    each mean as a fraction of the noise ceiling (for regret: the excess over the oracle's)."""
    G = np.asarray(per_seed, dtype=np.float64)
    rel = reliability or seed_reliability(G, targets, sources, k)
    with warnings.catch_warnings():  # all-NaN cells (the diagonal) stay NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        mean_gain = np.nanmean(G, axis=0)
    per_target = {}
    for i, t in enumerate(targets):
        if t not in rows or t not in rel["per_target"]:
            continue
        cols = [j for j in range(len(sources)) if sources[j] != t and not np.isnan(G[:, i, j]).any()]
        row = np.asarray(rows[t], dtype=np.float64)
        if row.shape != (len(sources),):
            raise ValueError(f"the row for {t} has shape {row.shape}; expected one value per source ({len(sources)})")
        per_target[t] = target_quality(row[cols], mean_gain[i, cols], [sources[j] for j in cols], k)
    if not per_target:
        raise ValueError("no target has both a prediction and a measured ground truth")
    return {"n_targets": len(per_target), "summary": summarise(per_target, rel, k, seed), "per_target": per_target}


def summarise(per_target: Mapping[str, Mapping[str, float]], reliability: dict, k: int = QUALITY_K, seed: int = 0) -> dict:
    """Mean over targets of every metric with its bootstrap CI, the ceiling (:func:`seed_reliability`)
    and the mean as a fraction of the ceiling (regret: the excess over the oracle's regret)."""
    ts = [t for t in per_target if t in reliability["per_target"]]
    summary = {}
    for m in METRICS:
        key = m if m != "top3_hit" else f"top{k}_hit"
        vals = [per_target[t][key] for t in ts]
        ceil = [reliability["per_target"][t]["ceiling_spearman" if m == "spearman" else f"oracle_{m}"] for t in ts]
        s = {"mean": float(np.nanmean(vals)), "ci": bootstrap_ci(vals, seed), "ceiling": float(np.nanmean(ceil))}
        if m in LOWER_IS_BETTER:
            s["excess_over_ceiling"] = float(np.nanmean(np.subtract(vals, ceil)))
            s["excess_ci"] = paired_ci(vals, ceil, "difference", seed)
        else:
            s["fraction_of_ceiling"] = float(s["mean"] / s["ceiling"]) if s["ceiling"] > 0 else float("nan")
            s["fraction_ci"] = paired_ci(vals, ceil, "ratio", seed)
        summary[key] = s
    return summary

