"""Predictors that learn from measured transfer (issue 28, item 4): transfer history and combinations.

The predictors of :mod:`pitune_core.predict.predictors` see a target's data and the source experts.
These also see the *measured* transfer of other (target, source) pairs, a ground truth's gain
matrix, so they cannot be :data:`~pitune_core.predict.predictors.PREDICTORS` (``fn(target, ctx)``):
they are plain functions, arrays and dicts in, arrays out, no hidden state (fit / predict verbs,
as scikit-learn's). Their names are :data:`pitune_core.spec.vocab.LEARNED_PREDICTOR_NAMES`; their
rows are scored by :func:`pitune_core.predict.quality.predictor_quality` like every other row (and in a
ground truth's quality table beside the logged rows, :func:`pitune_core.study.transfer.learned_rows`).

Inputs, everywhere:

- ``gain``: (n_targets, n_sources) measured gains (seed-averaged; NaN = not measured, e.g. the diagonal);
- ``targets``, ``sources``: the names of its rows and columns;
- ``modality_of``: task -> modality (``TaskSpec.modality``), for every target and the target asked about.

**Leave the target out, everywhere.** A target's row never reads that target's own measured gains:
:func:`transfer_history` skips the target (and any name in ``exclude``); :func:`loto_combination_rows`
fits each target's combination on the *other* targets only, with their transfer-history features
recomputed without the held-out target as well (nested), so the held-out target's gains enter
neither its features nor the fitted weights. (Its *column*, its own expert as a source of the other
targets, is read as every source's is: that is measured about its expert, not about it as a target,
and a user's new task has no such column.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from pitune_core.spec.vocab import LEARNED_PREDICTOR_NAMES

TRANSFER_HISTORY, COMBINED = LEARNED_PREDICTOR_NAMES
#: how :func:`fit_combination` combines its features: ``linear`` (scikit-learn's LinearRegression on
#: within-target ranks), ``rank_average`` (the mean within-target rank, each feature signed by its
#: mean Spearman with the gains on the training targets)
COMBINE_KINDS = ("linear", "rank_average")
#: the predictor rows a ground truth's :data:`COMBINED` row combines (those the plan scores), with
#: :data:`TRANSFER_HISTORY` added as a feature (recomputed per fold, :func:`loto_combination_rows`)
COMBINED_FEATURES = ("fisher", "data", "same_modality")


def _check(gain: np.ndarray, targets: Sequence[str], sources: Sequence[str]) -> np.ndarray:
    G = np.asarray(gain, dtype=np.float64)
    if G.shape != (len(targets), len(sources)):
        raise ValueError(f"gain must be (n_targets, n_sources) = ({len(targets)}, {len(sources)}), got {G.shape}")
    return G


def _nanmean_cols(G: np.ndarray) -> np.ndarray:
    """Column means over the defined (non-NaN) entries; NaN for a column with none."""
    n = (~np.isnan(G)).sum(0)
    s = np.nansum(G, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, s / np.maximum(n, 1), np.nan)


# ----------------------------------------------------------------------------- (a) transfer history

def transfer_history(gain: np.ndarray, targets: Sequence[str], sources: Sequence[str], modality_of: Mapping[str, str],
                     target: str, exclude: Iterable[str] = ()) -> np.ndarray:
    """A source's mean measured gain on the *other* targets of ``target``'s modality (one value per source).

    Reads only the rows of ``targets`` that are neither ``target`` nor in ``exclude``. A source never
    measured on another target of that modality gets its mean over the other targets of any modality;
    one never measured at all gets the row's mean (a neutral score), 0 when nothing is measured. The
    target need not be among ``targets`` (a new task: nothing of it is read anyway)."""
    G = _check(gain, targets, sources)
    if target not in modality_of:
        raise ValueError(f"no modality for {target!r}")
    skip = {target, *exclude}
    others = [i for i, t in enumerate(targets) if t not in skip]
    same = [i for i in others if modality_of.get(targets[i]) == modality_of[target]]
    row = _nanmean_cols(G[same]) if same else np.full(len(sources), np.nan)
    if np.isnan(row).any() and others:
        row = np.where(np.isnan(row), _nanmean_cols(G[others]), row)
    if np.isnan(row).any():
        row = np.where(np.isnan(row), float(np.nanmean(row)) if (~np.isnan(row)).any() else 0.0, row)
    return row


def transfer_history_rows(gain: np.ndarray, targets: Sequence[str], sources: Sequence[str],
                          modality_of: Mapping[str, str], exclude: Iterable[str] = ()) -> dict[str, np.ndarray]:
    """:func:`transfer_history` of every target (not in ``exclude``), each leaving itself (and ``exclude``) out."""
    ex = set(exclude)
    return {t: transfer_history(gain, targets, sources, modality_of, t, ex) for t in targets if t not in ex}


# ----------------------------------------------------------------------------- same family (a reference)

def same_family_row(target: str, sources: Sequence[str], family_of: Mapping[str, str]) -> np.ndarray:
    """1 for a source of ``target``'s family, 0 otherwise: a reference a user's task does not have (its
    family is ``user`` or unknown, so every source gets 0 and the row ranks nothing)."""
    fam = family_of.get(target)
    known = fam is not None and fam != "user"
    return np.array([float(known and family_of.get(s) == fam) for s in sources])


def same_modality_row(target: str, sources: Sequence[str], modality_of: Mapping[str, str]) -> np.ndarray:
    """1 for a source of ``target``'s modality, 0 otherwise (the trivial rule, from names alone)."""
    return np.array([float(modality_of.get(s) == modality_of[target]) for s in sources])


# ----------------------------------------------------------------------------- (c) combinations

def within_target_ranks(row: np.ndarray) -> np.ndarray:
    """A row's ranks scaled to [0, 1] (average ranks for ties; 0.5 everywhere for a constant row), so
    that features of different scales and targets of different spreads combine alike."""
    from scipy.stats import rankdata

    r = np.asarray(row, dtype=np.float64)
    if r.size < 2 or np.ptp(r) == 0:
        return np.full(r.shape, 0.5)
    return (rankdata(r, method="average") - 1) / (r.size - 1)


def _pairs(features: Mapping[str, Mapping[str, np.ndarray]], names: Sequence[str], G: np.ndarray,
           targets: Sequence[str], sources: Sequence[str], train: Sequence[str]):
    """Stacked (X, y, group) over the training targets' measured pairs (the target itself as a source dropped):
    X the within-target ranks of every feature, y the gain minus the target's mean measured gain."""
    X, y, grp = [], [], []
    for t in train:
        i = list(targets).index(t)
        keep = np.array([s != t for s in sources]) & ~np.isnan(G[i])
        if keep.sum() < 2:
            continue
        cols = np.column_stack([within_target_ranks(np.asarray(features[n][t], dtype=np.float64)[keep]) for n in names])
        g = G[i, keep]
        X.append(cols)
        y.append(g - g.mean())
        grp += [t] * int(keep.sum())
    if not X:
        raise ValueError("no training target has the measured gain of at least 2 sources")
    return np.vstack(X), np.concatenate(y), grp


def fit_combination(features: Mapping[str, Mapping[str, np.ndarray]], gain: np.ndarray, targets: Sequence[str],
                    sources: Sequence[str], train_targets: Iterable[str], kind: str = "linear") -> dict:
    """Fit a combination of predictor rows on ``train_targets`` only (no other row of ``gain`` is read).

    ``features[name][target]``: a predictor's row (one score per source) for each training target.
    Each feature enters as its within-target ranks (:func:`within_target_ranks`), the gains as their
    deviation from the target's mean (only the order within a target matters). ``kind``: ``linear``
    fits scikit-learn's ``LinearRegression`` to those pairs; ``rank_average`` weights every feature
    +1 or -1 by the sign of its mean Spearman with the gains over the training targets (0 if
    exactly 0). Returns ``{"kind", "features", "coef", "intercept", "train_targets"}``: plain data,
    what :func:`predict_combination` needs."""
    from scipy.stats import spearmanr

    if kind not in COMBINE_KINDS:
        raise ValueError(f"unknown combination {kind!r}; choose one of {', '.join(COMBINE_KINDS)}")
    G = _check(gain, targets, sources)
    names = sorted(features)
    if not names:
        raise ValueError("a combination needs at least one feature")
    train = [t for t in dict.fromkeys(train_targets)]
    missing = sorted({t for t in train if t not in targets} | {f"{n}[{t}]" for n in names for t in train
                                                                 if t not in features[n]})
    if missing:
        raise ValueError(f"no gain or feature row for {', '.join(missing[:5])}")
    X, y, grp = _pairs(features, names, G, targets, sources, train)
    if kind == "linear":
        from sklearn.linear_model import LinearRegression

        lr = LinearRegression().fit(X, y)
        coef, intercept = lr.coef_.astype(float).tolist(), float(lr.intercept_)
    else:
        g = np.asarray(grp)
        coef = []
        for j in range(X.shape[1]):
            rhos = []
            for t in dict.fromkeys(grp):
                x, yy = X[g == t, j], y[g == t]
                rhos.append(float(spearmanr(x, yy).statistic) if np.ptp(x) > 0 and np.ptp(yy) > 0 else 0.0)
            coef.append(float(np.sign(np.mean(rhos))))
        intercept = 0.0
    return {"kind": kind, "features": names, "coef": coef, "intercept": intercept, "train_targets": list(dict.fromkeys(grp))}


def predict_combination(model: Mapping, features: Mapping[str, np.ndarray]) -> np.ndarray:
    """A target's combined row from its feature rows (``features[name]``, one score per source)."""
    names = list(model["features"])
    missing = [n for n in names if n not in features]
    if missing:
        raise ValueError(f"missing feature row(s) {', '.join(missing)}")
    X = np.column_stack([within_target_ranks(np.asarray(features[n], dtype=np.float64)) for n in names])
    out = X @ np.asarray(model["coef"], dtype=np.float64) + float(model["intercept"])
    if model["kind"] == "rank_average":
        out = out / max(len(names), 1)
    return out


def loto_combination_rows(features: Mapping[str, Mapping[str, np.ndarray]], gain: np.ndarray, targets: Sequence[str],
                          sources: Sequence[str], modality_of: Mapping[str, str], kind: str = "linear",
                          history: bool = True) -> dict[str, np.ndarray]:
    """Leave-one-target-out combined rows: for each target, the combination fitted on every *other*
    target (:func:`fit_combination`), applied to that target's feature rows.

    ``features``: gain-free predictor rows per target (e.g. ``fisher``, ``same_modality``), for every
    target. ``history`` adds :data:`TRANSFER_HISTORY` as a feature, recomputed per fold without the
    held-out target (a training target's history leaves out itself *and* the held-out one), so the
    held-out target's measured gains are read nowhere in its row.

    A target is never its own source: where it is among ``sources`` its features are ranked without
    it (as a training target's are, :func:`fit_combination`), and its entry of the row is NaN."""
    G = _check(gain, targets, sources)
    out = {}
    for t in targets:
        train = [u for u in targets if u != t]
        feats = {n: dict(rows) for n, rows in features.items()}
        if history:
            feats[TRANSFER_HISTORY] = {u: transfer_history(G, targets, sources, modality_of, u, exclude={t}) for u in train}
            feats[TRANSFER_HISTORY][t] = transfer_history(G, targets, sources, modality_of, t)
        model = fit_combination({n: {u: r[u] for u in train} for n, r in feats.items()}, G, targets, sources, train, kind)
        cand = np.array([s != t for s in sources])
        row = np.full(len(sources), np.nan)
        row[cand] = predict_combination(model, {n: np.asarray(r[t], dtype=np.float64)[cand] for n, r in feats.items()})
        out[t] = row
    return out
