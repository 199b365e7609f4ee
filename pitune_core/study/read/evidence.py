"""What a pre-registered comparison shows, regime by regime, and what it supports recommending.

The protocol's ``results.csv`` (:mod:`pitune_core.study.protocol`) lists every planned run with its
status; a study is filled over several sessions, so most of the time some rows are ``missing``.
This module turns those rows (already parsed and validated by
:meth:`pitune_core.study.read.reader.Study.protocol_results`) into what the dashboard shows, without
torch and without re-implementing any statistic (:mod:`pitune_core.study.read.stats` does the work):

- progress per regime (``4-shot``, ``16-shot``, ``full``): done / failed / missing of the planned runs;
- the approach table: mean ± std (ddof=1) over per-target means, n targets;
- the paired differences π-Tuning − target-only and π-Tuning − every other approach present (mean,
  bootstrap 95% CI over targets, Wilcoxon p, win/tie/loss), with the best other *transfer* approach
  named;
- a plain-language verdict per comparison and a recommendation per regime.

Only *complete* targets enter a number: a target counts for an approach when every planned seed of
that (target, approach, regime) is done, and a paired difference is taken over the targets complete
for both approaches (``n`` says how many). A half-run seed set is never averaged with a full one.

The recommendation rule (issue 11): π-Tuning is recommended for a regime only if its 95% CI against
target-only **and** against the best other transfer approach both lie above 0; otherwise the
approach with the best mean is recommended (ranked over the targets that every approach with a
complete target has complete, so a partly run approach is not ranked on an easier subset), and the
text says plainly that π-Tuning's advantage is not shown. A regime with missing runs is labelled
provisional. The rule lives here, not in the dashboard, so the report can state the same verdict.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pitune_core.study.read import stats
from pitune_core.spec.vocab import ABLATIONS, TRANSFER
from pitune_core.common import check_task_name
from pitune_core.study.read.results import csv_rows, parse_float

MAIN = "pi-tuning"
BASELINE = "target-only"
#: display names of known approaches; any other (validated) approach name is shown as it is
APPROACH_LABELS = {"pi-tuning": "π-Tuning", "pi-tuning-no-own": "π-Tuning (no own expert)",
                   "pi-tuning-global": "π-Tuning (global weights)",
                   "pi-tuning-weights-only": "π-Tuning (weights only)"}


#: the columns a results.csv must have (the writer adds more: key, accuracy, steps, time, ...)
REQUIRED_COLUMNS = ("target", "approach", "shots", "seed", "status", "score")
STATUSES = ("done", "failed", "missing")
MAX_RESULTS_BYTES = 16 << 20  # a full plan is ~1,500 rows (< 1 MB); anything far larger is not ours
_APPROACH = re.compile(r"[a-z][a-z0-9_-]{0,63}")  # no markup, no path, no space can come through


def read_protocol_csv(path: str | os.PathLike, shown: str | None = None) -> list[dict]:
    """Parse and validate a protocol ``results.csv`` (untrusted: bounded size, required columns,
    known statuses, task and approach names as identifiers, shots an int >= 1 or ``"full"``, seeds
    ints, a done row's score a number in [0, 1], no duplicate run). Returns rows with shots an int or
    ``"full"``, seed an int, score / accuracy / steps / times floats or None (``parse_float``) and
    sources a list; raises ``ValueError`` with one line naming the file (``shown``) and line."""
    path = Path(path)
    shown = shown or str(path)
    rows, seen = [], set()
    for where, r in csv_rows(path, shown, MAX_RESULTS_BYTES, REQUIRED_COLUMNS, "results.csv"):
        status = r.get("status") or ""
        if status not in STATUSES:
            raise ValueError(f"{where}: status {status[:40]!r} is not one of {', '.join(STATUSES)}")
        try:
            target = check_task_name(r.get("target"), "the target")
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        approach = r.get("approach") or ""
        if not _APPROACH.fullmatch(approach):
            raise ValueError(f"{where}: approach {approach[:40]!r} is not an approach name")
        shots_s, seed_s = (r.get("shots") or "").strip(), (r.get("seed") or "").strip()
        if shots_s == "full":
            shots: int | str = "full"
        elif shots_s.isdigit() and int(shots_s) >= 1:
            shots = int(shots_s)
        else:
            raise ValueError(f"{where}: shots {shots_s[:40]!r} is neither a positive integer nor 'full'")
        if not seed_s.isdigit():
            raise ValueError(f"{where}: seed {seed_s[:40]!r} is not a non-negative integer")
        ident = (target, approach, shots, int(seed_s))
        if ident in seen:
            raise ValueError(f"{where}: a second row for {target} {approach} shots={shots} seed={seed_s}")
        seen.add(ident)
        score = parse_float(r.get("score"))
        if status == "done" and (score is None or not 0.0 <= score <= 1.0):
            raise ValueError(f"{where}: a done run needs a score between 0 and 1, got {(r.get('score') or '')[:40]!r}")
        row: dict[str, Any] = {"key": r.get("key") or "", "target": target, "approach": approach,
                               "shots": shots, "seed": int(seed_s), "status": status,
                               "score": score if status == "done" else None,
                               "metric": r.get("metric") or "", "selection": r.get("selection") or "",
                               "sources": [s for s in (r.get("sources") or "").split("|") if s]}
        for c in ("accuracy", "steps_select", "steps_tune", "steps_total", "time_s", "cpu_s"):
            row[c] = parse_float(r.get(c))
        rows.append(row)
    return rows


def label(approach: str) -> str:
    return APPROACH_LABELS.get(approach, approach)


def regime_of(shots: Any) -> str:
    """``4`` -> ``"4-shot"``; ``"full"`` / None -> ``"full"``."""
    return "full" if shots in (None, "full") else f"{int(shots)}-shot"


def _regime_key(shots: Any) -> tuple:
    return (1, 0) if shots in (None, "full") else (0, int(shots))


def _kind(approach: str) -> str:
    if approach == MAIN:
        return "main"
    if approach == BASELINE:
        return "baseline"
    if approach in TRANSFER:
        return "transfer"
    if approach in ABLATIONS:
        return "ablation"
    return "other"


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def verdict(p: dict) -> str:
    """One sentence for a paired difference ``p`` (a row of :func:`summarise`'s ``diffs``)."""
    head = f"At {p['regime'].replace('-shot', ' shots') if p['regime'] != 'full' else 'full data'} " \
           f"{label(p['a'])} − {label(p['b'])}"
    if not p["n"]:
        return f"{head}: no target has every planned seed of both approaches done yet."
    wtl = f"(W/T/L {p['wins']}/{p['ties']}/{p['losses']} over {p['n']} target{'s' if p['n'] != 1 else ''})"
    if not (_finite(p["ci_low"]) and _finite(p["ci_high"])):
        return f"{head} = {p['mean']:+.1f} points {wtl}: too few complete targets for a confidence interval."
    ci = f"95% CI [{p['ci_low']:+.1f}, {p['ci_high']:+.1f}]"
    if p["ci_low"] > 0:
        end = f"{label(p['a'])} is ahead of {label(p['b'])} (CI above 0)"
    elif p["ci_high"] < 0:
        end = f"{label(p['a'])} is behind {label(p['b'])} (CI below 0)"
    else:
        end = "not distinguishable from 0"
    if _fragile(p):
        end += (f"; fragile: the plain percentile bootstrap gives [{p['pct_low']:+.1f}, {p['pct_high']:+.1f}], "
                f"which {'covers' if p['ci_low'] > 0 or p['ci_high'] < 0 else 'excludes'} 0")
    return f"{head} = {p['mean']:+.1f} points, {ci} {wtl}: {end}."


def _fragile(p: dict) -> bool:
    """:func:`stats.fragile` of a paired row (False for a row without a percentile interval)."""
    return _finite(p.get("pct_low")) and stats.fragile(p["ci_low"], p["ci_high"], p["pct_low"], p["pct_high"])


def recommend(regime: dict, means: dict[str, dict[str, float]]) -> dict:
    """The recommendation for one regime of :func:`summarise` (rule in the module docstring; ``means``
    are the regime's complete per-target means, :func:`pitune_core.study.read.stats.complete_means`):
    ``{"approach", "pi_tuning" (bool: the rule for π-Tuning held), "provisional" (bool), "text"}``;
    ``approach`` is None when no approach has a complete target yet."""
    diffs = {d["b"]: d for d in regime["diffs"] if d["a"] == MAIN}
    table = [a for a in regime["approaches"] if a["n_targets"] > 0 and _finite(a["mean"])]
    provisional = not regime["complete"]
    pending = regime.get("pending_others") or []
    tail = (f" Provisional: {regime['missing'] + regime['failed']} of {regime['planned']} planned runs of this "
            "regime are not done" + (f"; not yet compared: {', '.join(label(a) for a in pending)}" if pending else "")
            + ".") if provisional else ""
    vs_base = diffs.get(BASELINE)
    best = regime["best_other"]
    vs_best = diffs.get(best) if best else None

    def above(d):
        return d is not None and d["n"] > 0 and _finite(d["ci_low"]) and d["ci_low"] > 0

    if above(vs_base) and (best is None or above(vs_best)):
        against = f" and {label(best)} (the best other transfer approach)" if best else \
            " (no other transfer approach in this regime)"
        shaky = [label(d["b"]) for d in (vs_base, vs_best) if d is not None and _fragile(d)]
        fragile = (f" Fragile: against {' and '.join(shaky)} the plain percentile bootstrap interval covers 0, "
                   "so this rests on the CI method.") if shaky else ""
        return {"approach": MAIN, "pi_tuning": True, "provisional": provisional,
                "text": f"{regime['regime']}: recommend {label(MAIN)}: its 95% CI lies above 0 against "
                        f"{label(BASELINE)}{against}.{fragile}{tail}"}
    if not table:
        return {"approach": None, "pi_tuning": False, "provisional": True,
                "text": f"{regime['regime']}: no recommendation yet: no approach has a target with every "
                        f"planned seed done.{tail}"}
    # rank on the targets every such approach has complete, so a partly run approach is not
    # compared on an easier subset (its own complete targets when they share none)
    # (while a regime fills, fall back to the approaches with the most complete targets; then to each
    # approach's own complete targets)
    pool, left_out = table, 0
    common = set.intersection(*(set(means[a["approach"]]) for a in pool))
    if len(common) < 2:
        most = max(a["n_targets"] for a in table)
        pool = [a for a in table if a["n_targets"] == most]
        left_out = len(table) - len(pool)
        common = set.intersection(*(set(means[a["approach"]]) for a in pool))
    if common:
        ranked = {a["approach"]: float(np.mean([means[a["approach"]][t] for t in common])) for a in pool}
        n_rank = len(common)
    else:
        ranked, n_rank = {a["approach"]: a["mean"] for a in pool}, None
    top_name = max(ranked, key=lambda a: (ranked[a], a == MAIN, a))
    top = {"approach": top_name, "mean": ranked[top_name],
           "n_targets": n_rank if n_rank is not None else next(a["n_targets"] for a in table if a["approach"] == top_name)}
    over = (f"over the {top['n_targets']} targets every ranked approach has complete" if n_rank is not None
            else f"over its {top['n_targets']} complete targets")
    if left_out:
        over += f"; {left_out} approach{'es' if left_out != 1 else ''} with fewer complete targets not ranked"
    if not any(a["approach"] == MAIN for a in regime["approaches"]):
        return {"approach": top["approach"], "pi_tuning": False, "provisional": provisional,
                "text": f"{regime['regime']}: recommend {label(top['approach'])}, the best mean ({top['mean']:.1f} "
                        f"points {over}); {label(MAIN)} is not part of this regime.{tail}"}
    why = []
    if vs_base is None or not above(vs_base):
        why.append(f"against {label(BASELINE)}")
    if best is not None and not above(vs_best):
        why.append(f"against {label(best)}")
    return {"approach": top["approach"], "pi_tuning": False, "provisional": provisional,
            "text": f"{regime['regime']}: recommend {label(top['approach'])}, the best mean ({top['mean']:.1f} "
                    f"points {over}). {label(MAIN)}'s advantage is not shown: its 95% CI "
                    f"does not lie above 0 {' and '.join(why)}.{tail}"}


def summarise(rows: Sequence[dict], seed: int = 0) -> dict:
    """Progress, approach table, paired differences, verdicts and recommendation per regime.

    ``rows``: parsed results.csv rows (target, approach, shots int or "full", seed, status, score in
    0..1 or None). Returns ``{"planned", "done", "failed", "missing", "regimes": [...]}``; each regime:
    ``regime, shots, planned, done, failed, missing, complete, targets, approaches (table rows),
    best_other, diffs (paired rows with verdict), recommendation``."""
    rows = list(rows)
    out: dict[str, Any] = {"planned": len(rows), **{s: sum(r["status"] == s for r in rows)
                                                     for s in ("done", "failed", "missing")}, "regimes": []}
    for shots in sorted({r["shots"] for r in rows}, key=_regime_key):
        mine = [r for r in rows if r["shots"] == shots]
        g = regime_of(shots)
        reg: dict[str, Any] = {"regime": g, "shots": shots, "planned": len(mine),
                               **{s: sum(r["status"] == s for r in mine) for s in ("done", "failed", "missing")},
                               "targets": len({r["target"] for r in mine})}
        reg["complete"] = reg["done"] == reg["planned"]
        means, planned_targets = stats.complete_means(rows, shots)
        order = sorted(planned_targets, key=lambda a: (a != MAIN, a != BASELINE, a))
        table = []
        for a in order:
            vals = list(means.get(a, {}).values())
            m, sd = stats.mean_std(vals)
            runs = [r for r in mine if r["approach"] == a]
            table.append({"approach": a, "label": label(a), "kind": _kind(a), "mean": m, "std": sd,
                          "n_targets": len(vals), "planned_targets": planned_targets[a],
                          "runs_done": sum(r["status"] == "done" for r in runs), "runs_planned": len(runs)})
        reg["approaches"] = table
        best = stats.best_other(means, [a for a in order if _kind(a) == "transfer"], over=means.get(MAIN))
        reg["best_other"] = best
        reg["pending_others"] = stats.pending_others(means, MAIN, [a for a in order if _kind(a) == "transfer"])
        diffs = []
        if MAIN in planned_targets:
            for b in order:
                if b == MAIN:
                    continue
                p = stats.compare_to(means, MAIN, b, seed=seed)
                d = p.as_dict() if p is not None else {"n": 0, "mean": float("nan"), "ci_low": float("nan"),
                                                       "ci_high": float("nan"), "p_wilcoxon": float("nan"),
                                                       "wins": 0, "ties": 0, "losses": 0}
                d.update(regime=g, a=MAIN, b=b, kind="best other" if b == best else _kind(b),
                         label=f"{label(MAIN)} − {label(b)}", targets=reg["targets"])
                d["verdict"] = verdict(d)
                diffs.append(d)
        reg["diffs"] = diffs
        reg["recommendation"] = recommend(reg, means)
        out["regimes"].append(reg)
    return out


# ----------------------------------------------------------------------------- one target, one run

#: the references a user's run is held against: the bare backbone, and the target's own expert
#: trained on the same data (the protocol's baseline)
ZERO_SHOT = "zero-shot"


def target_measurements(rows: Sequence[dict], target: str) -> dict[str, list[dict]]:
    """What a study measured on one target, per regime (``"4-shot"``, ``"16-shot"``, ``"full"``, in
    that order): one row per approach with its done runs' scores by seed, their mean and std (ddof=1;
    NaN for one seed), best mean first. ``rows`` are parsed results rows (:func:`read_protocol_csv`,
    or a legacy ``compare/results.csv`` read alike); rows that are not done, or have no score, are
    left out (so every number is a measured one)."""
    out: dict[str, list[dict]] = {}
    mine = [r for r in rows if r.get("target") == target and r.get("status", "done") == "done"
            and _finite(r.get("score"))]
    for shots in sorted({r["shots"] for r in mine}, key=_regime_key):
        g = regime_of(shots)
        table = []
        for a in dict.fromkeys(r["approach"] for r in mine if r["shots"] == shots):
            by_seed = {r["seed"]: float(r["score"]) for r in mine if r["shots"] == shots and r["approach"] == a}
            scores = [by_seed[s] for s in sorted(by_seed, key=str)]
            m, sd = stats.mean_std(scores)
            table.append({"approach": a, "label": label(a), "kind": _kind(a), "shots": shots,
                          "seeds": sorted(by_seed, key=str), "scores": scores, "mean": m, "std": sd})
        table.sort(key=lambda t: (-t["mean"], t["approach"]))
        out[g] = table
    return out


def references(measured: dict[str, list[dict]], regime: str, zero_shot: float | None) -> dict[str, float]:
    """The reference lines for a run in ``regime``: the zero-shot score (any regime: no training) and
    target-only's mean at that regime, where the study measured it. Scores in 0..1."""
    refs = {}
    if _finite(zero_shot):
        refs[ZERO_SHOT] = float(zero_shot)
    base = next((a for a in measured.get(regime, []) if a["approach"] == BASELINE), None)
    if base is not None and _finite(base["mean"]):
        refs[BASELINE] = float(base["mean"])
    return refs


def run_flags(score: float | None, regime: str, measured: dict[str, list[dict]], zero_shot: float | None) -> list[str]:
    """What a user's run scoring ``score`` (0..1, the task's metric) in ``regime`` falls below, in
    words: zero-shot, and target-only at the same regime (the mean of its seeds); [] when it is at
    or above both, or has no score. A regime the study did not measure has no target-only line."""
    if not _finite(score):
        return []
    flags = []
    for name, ref in references(measured, regime, zero_shot).items():
        if score < ref:
            what = ("zero-shot (the backbone without any expert)" if name == ZERO_SHOT else
                    f"target-only at {regime} (the target's own expert alone, mean of "
                    f"{len(next(a for a in measured[regime] if a['approach'] == BASELINE)['scores'])} seeds)")
            flags.append(f"below {what}: {100 * score:.1f} vs {100 * ref:.1f}")
    return flags
