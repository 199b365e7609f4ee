"""Do cross-modality sources help at all? The study's measured transfer, split by modality.

The task graph links tasks across modalities, and π-Tuning may borrow from any of them; whether a
cross-modality source actually transfers is a measured question, not a property of the graph. This
module answers it from a gain matrix (rows targets, columns sources, accuracy points, NaN where
not measured): per target, the mean gain of its same-modality sources and of its cross-modality
sources; the unit of the bootstrap is the target (pairs of one target are not independent), so
each target weighs equally and the 95% CIs are :func:`pitune_core.study.read.stats.bootstrap_ci` over
the per-target means. The same-minus-cross difference is paired over the targets that have both.

Plain numpy in, a dict and one sentence out; no torch (the dashboard's Graph tab states it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from pitune_core.study.read.stats import bootstrap_ci


def _group(values: list[float], n_pairs: int) -> dict:
    lo, hi = bootstrap_ci(values) if values else (float("nan"), float("nan"))
    return {"mean": float(np.mean(values)) if values else float("nan"), "ci": (lo, hi),
            "n_targets": len(values), "n_pairs": int(n_pairs)}


def modality_gains(targets: Sequence[str], sources: Sequence[str], gains, modality: Mapping[str, str | None]
                   | Callable[[str], str | None]) -> dict:
    """Same- vs cross-modality gains of a measured matrix ``gains[i, j]`` (target i from source j).

    Returns ``{"same": g, "cross": g, "difference": d}`` with ``g = {mean, ci, n_targets, n_pairs}``
    (mean over targets of each target's mean gain; CI over targets) and ``d = {mean, ci,
    n_targets}`` (per-target same minus cross, over the targets that have both). Pairs whose
    target or source has no known modality, the diagonal and NaN cells are left out."""
    M = np.asarray(gains, dtype=np.float64)
    if M.shape != (len(targets), len(sources)):
        raise ValueError(f"gains must be ({len(targets)}, {len(sources)}), got {M.shape}")
    mod = modality if callable(modality) else modality.get
    same_t, cross_t, diff_t = [], [], []
    n_same = n_cross = 0
    for i, t in enumerate(targets):
        mt = mod(t)
        if not mt:
            continue
        same, cross = [], []
        for j, s in enumerate(sources):
            ms, g = mod(s), M[i, j]
            if s == t or not ms or not math.isfinite(g):
                continue
            (same if ms == mt else cross).append(float(g))
        n_same, n_cross = n_same + len(same), n_cross + len(cross)
        if same:
            same_t.append(float(np.mean(same)))
        if cross:
            cross_t.append(float(np.mean(cross)))
        if same and cross:
            diff_t.append(float(np.mean(same)) - float(np.mean(cross)))
    d_lo, d_hi = bootstrap_ci(diff_t) if diff_t else (float("nan"), float("nan"))
    return {"same": _group(same_t, n_same), "cross": _group(cross_t, n_cross),
            "difference": {"mean": float(np.mean(diff_t)) if diff_t else float("nan"), "ci": (d_lo, d_hi),
                           "n_targets": len(diff_t)}}


def _verdict(lo: float, hi: float, help_: str, hurt: str) -> str:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "too few targets for a confidence interval"
    if lo > 0:
        return help_
    if hi < 0:
        return hurt
    return "no measurable effect" if help_ != "they help" else "no measurable help"


def _pts(x: float) -> str:
    return f"{x:+.1f}" if math.isfinite(x) else "–"


def _ci(ci) -> str:
    lo, hi = ci
    return f"[{_pts(lo)}, {_pts(hi)}]" if math.isfinite(lo) and math.isfinite(hi) else "[no CI]"


def finding_sentence(res: dict) -> str:
    """The finding in plain words, e.g. "cross-modality sources gain +0.1 points [-1.0, +1.2]
    (12 targets, 96 pairs): no measurable help; same-modality sources gain +7.0 points [...]"."""
    s, c, d = res["same"], res["cross"], res["difference"]
    if not c["n_targets"] and not s["n_targets"]:
        return "no measured pair has a target and a source of known modality"
    parts = []
    if c["n_targets"]:
        parts.append(f"cross-modality sources gain {_pts(c['mean'])} points {_ci(c['ci'])} "
                     f"({c['n_targets']} targets, {c['n_pairs']} pairs): "
                     + _verdict(*c["ci"], "they help", "they hurt"))
    else:
        parts.append("no cross-modality pair was measured")
    if s["n_targets"]:
        parts.append(f"same-modality sources gain {_pts(s['mean'])} points {_ci(s['ci'])} "
                     f"({s['n_targets']} targets, {s['n_pairs']} pairs): "
                     + _verdict(*s["ci"], "they help", "they hurt"))
    if d["n_targets"]:
        parts.append(f"same minus cross, paired over {d['n_targets']} targets: {_pts(d['mean'])} points "
                     f"{_ci(d['ci'])}: " + _verdict(*d["ci"], "same-modality sources transfer better",
                                                    "cross-modality sources transfer better"))
    return "; ".join(parts) + "."
