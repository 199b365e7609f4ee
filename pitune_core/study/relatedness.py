"""Does relatedness carry transfer? The relatedness pilot of a task world (issue 27).

A task world is worth measuring predictors on only if related tasks transfer more than unrelated ones.
This module reads a transfer plan's measured pairs (``groundtruth/<plan>/pairs.jsonl``: every target
trained from each source expert and from scratch, per seed) and compares the mean transfer gain of
three kinds of pairs, by the families and modalities the task registry declared before anything was
measured:

- ``same_family``: the source's family is the target's (any modality);
- ``same_modality_other_family``: another family, the target's modality;
- ``cross_modality_other_family``: another family and another modality.

The analysis is fixed here and in the plan's notes before its pairs run: a pair's gain is its seed mean
(points over the target's from-scratch score on the same seed); per target, the mean gain of each
kind; over targets, the mean with a BCa bootstrap 95 % CI (:func:`pitune_core.study.read.stats.paired`).
The headline is the paired difference *same family − other family* (other family = both other kinds)
over targets: related tasks carry transfer where its CI lies above 0. Nothing here trains a model.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from pitune_core.common import write_atomic
from pitune_core.study.read.stats import bootstrap_ci, paired

KINDS = ("same_family", "same_modality_other_family", "cross_modality_other_family")
RESULT_FILE = "relatedness.json"


def pair_kind(target: dict, source: dict) -> str:
    """The kind of a (target, source) pair from their ``{"family", "modality"}``."""
    if target["family"] == source["family"]:
        return "same_family"
    return "same_modality_other_family" if target["modality"] == source["modality"] else "cross_modality_other_family"


def relatedness(gains: np.ndarray, tasks: list[str], info: dict[str, dict], targets: list[str] | None = None,
                seed: int = 0) -> dict:
    """The pilot's analysis of a ``(n_seeds, n_tasks, n_tasks)`` gain tensor (points, NaN where not
    measured; :func:`pitune_core.study.transfer.gain_tensor`) over ``tasks`` with their
    ``{"family", "modality"}``. Returns per-kind means with CIs over targets, the paired difference
    same family − other family, and every pair's seed-mean gain."""
    with warnings.catch_warnings():  # a pair never measured (a gated source) is NaN on every seed: stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(gains, axis=0) if np.isfinite(gains).any() else np.full(gains.shape[1:], np.nan)
    n_seeds = np.sum(np.isfinite(gains), axis=0)
    pairs, per_target = [], {}
    for i, t in enumerate(tasks):
        if targets is not None and t not in targets:
            continue
        by_kind: dict[str, list[float]] = {k: [] for k in KINDS}
        for j, s in enumerate(tasks):
            if s == t or not np.isfinite(mean[i, j]):
                continue
            kind = pair_kind(info[t], info[s])
            by_kind[kind].append(float(mean[i, j]))
            pairs.append({"target": t, "source": s, "kind": kind, "gain": float(mean[i, j]), "seeds": int(n_seeds[i, j])})
        if any(by_kind.values()):
            per_target[t] = {k: (float(np.mean(v)) if v else None) for k, v in by_kind.items()}
            other = by_kind["same_modality_other_family"] + by_kind["cross_modality_other_family"]
            per_target[t]["other_family"] = float(np.mean(other)) if other else None
    kinds = {}
    for k in (*KINDS, "other_family"):
        vals = [row[k] for row in per_target.values() if row[k] is not None]
        lo, hi = bootstrap_ci(vals, seed=seed)
        kinds[k] = {"targets": len(vals), "pairs": sum(p["kind"] == k or (k == "other_family" and p["kind"] != "same_family")
                                                      for p in pairs),
                    "mean": float(np.mean(vals)) if vals else None, "ci": [lo, hi]}
    both = [t for t, row in per_target.items() if row["same_family"] is not None and row["other_family"] is not None]
    diff = paired([per_target[t]["same_family"] for t in both], [per_target[t]["other_family"] for t in both], seed=seed)
    carries = bool(both) and diff.ci_low > 0 and diff.mean > 0
    return {"kinds": kinds,
            "difference": {"what": "same family - other family, per target, then over targets", "targets": len(both),
                           "mean": diff.mean, "ci": [diff.ci_low, diff.ci_high],
                           "ci_percentile": [diff.pct_low, diff.pct_high], "wilcoxon_p": diff.p_wilcoxon,
                           "wins": diff.wins, "ties": diff.ties, "losses": diff.losses},
            "verdict": ("related tasks carry more transfer: same family > other family, 95 % CI above 0" if carries else
                        "not shown: the CI of same family - other family does not lie above 0"),
            "per_target": per_target, "pairs": pairs}


def run_relatedness(plan, out: str | Path) -> dict:
    """The analysis of ``plan``'s pairs in ``out``; written to ``out/relatedness.json``."""
    from pitune_core.data.tasks import get_task  # lazy: loads safetensors
    from pitune_core.study.transfer import gain_tensor  # lazy: loads torch

    out = Path(out)
    gains = gain_tensor(out / "pairs.jsonl", plan.tasks, plan.seeds, plan.key())
    info = {t: {"family": get_task(t).family, "modality": get_task(t).modality} for t in plan.tasks}
    res = {"plan": plan.name, "seeds": list(plan.seeds), "families": info,
           **relatedness(gains, plan.tasks, info, plan.targets)}
    write_atomic(out / RESULT_FILE, json.dumps(res, indent=2))
    return res


def markdown(res: dict) -> list[str]:
    """The pilot as a report section."""
    names = {"same_family": "same family", "same_modality_other_family": "same modality, other family",
             "cross_modality_other_family": "other modality, other family", "other_family": "other family (both)"}

    def fmt(x):
        return "–" if x is None or not np.isfinite(x) else f"{x:+.1f}"

    d = res["difference"]
    out = [f"### Relatedness pilot (`{res['plan']}`: {len(res['per_target'])} targets, {len(res['seeds'])} seeds)", "",
           "Mean transfer gain over the target's from-scratch expert (points, seed mean per pair, mean per target, "
           "then over targets; BCa bootstrap 95 % CI over targets):", "",
           "| kind of pair | targets | pairs | mean gain | 95 % CI |", "|---|---|---|---|---|"]
    for k, v in res["kinds"].items():
        out.append(f"| {names[k]} | {v['targets']} | {v['pairs']} | {fmt(v['mean'])} | [{fmt(v['ci'][0])}, {fmt(v['ci'][1])}] |")
    out += ["", f"Same family − other family, paired over {d['targets']} targets: {fmt(d['mean'])} "
            f"[{fmt(d['ci'][0])}, {fmt(d['ci'][1])}] (percentile [{fmt(d['ci_percentile'][0])}, "
            f"{fmt(d['ci_percentile'][1])}]), Wilcoxon p {d['wilcoxon_p']:.3f}, {d['wins']}/{d['ties']}/{d['losses']} "
            f"win/tie/loss. **{res['verdict']}.**", "",
            "| target | family | same family | same modality, other family | other modality, other family |",
            "|---|---|---|---|---|"]
    for t, row in res["per_target"].items():
        out.append(f"| {t} | {res['families'][t]['family']} | {fmt(row['same_family'])} | "
                   f"{fmt(row['same_modality_other_family'])} | {fmt(row['cross_modality_other_family'])} |")
    return out + [""]
