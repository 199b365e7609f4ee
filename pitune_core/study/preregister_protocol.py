"""Draft the few-shot protocol's plans before any of their runs (issue 28): a small pilot, the number of
seeds from the pilot by a stated power calculation, then the main and the held-out confirmation plan.

Every input is a committed file, so anyone can re-derive each plan:

1. **Pilot** (:func:`draft_pilot`): from the main targets of the ground truth's plan
   (``plans/groundtruth-v3.json``; never a target of its confirmation plan), ``per_modality`` targets of
   each modality (modalities in the order of their first main target, targets in plan order), drawn
   without replacement with ``numpy.random.default_rng(draw_seed)``; 2 seeds (``PILOT_SEEDS``, not seeds
   of the main plan, so no few-shot sample of the pilot is one of the main plan's), shots 4 and 16, the
   core approaches only, recipe budget ``"equal"``, robustness off. Its results size the main plan's
   seeds and are never evidence.
2. **Seeds** (:func:`seeds_for_power`, :func:`protocol_seeds`): :data:`SEED_RULE` (below, and in every
   drafted plan's notes with its inputs).
3. **Main and confirmation plans** (:func:`draft_plans`): the ground truth's main targets / its
   confirmation targets (less any without a ``max(shots)``-shot sample: a class with fewer training
   examples), shots 4, 16 and full data, the core approaches at every shots, the recipe's ablations
   (``pi-tuning-no-own``: π-Tuning without its own expert) and the other baselines at 16 shots, recipe
   budget ``"equal"``, robustness on, the seeds of step 2, and :data:`ANALYSIS` as the analysis.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import stats as sps

from pitune_core.data.tasks import get_task
from pitune_core.spec.vocab import ABLATIONS, CORE, DEFAULT_K, OTHERS, STUDY_SHOTS
from pitune_core.common import sha256_file
from pitune_core.study.preregister import min_class_train
from pitune_core.study.protocol import PlanError, ProtocolPlan, load_plan as load_protocol_plan, plan_to_json
from pitune_core.study.read import stats
from pitune_core.study.read.evidence import read_protocol_csv
from pitune_core.study.read.recommend import RULE_TEXT as RECOMMEND_RULE
from pitune_core.study.transfer import load_plan as load_groundtruth_plan

MAIN, BASELINE = "pi-tuning", "target-only"
#: the goal the seeds are sized for (issue 28): pi-tuning - target-only, points
GOAL_POINTS = 4.5
POWER, ALPHA = 0.8, 0.05
MIN_SEEDS, MAX_SEEDS = 3, 8
PILOT_SEEDS = [1000, 1001]
PILOT_SHOTS = [4, 16]
PILOT_DRAW_SEED = 2029
SHOTS = list(STUDY_SHOTS)
EXTRA_SHOTS = [16]

SEED_RULE = (
    "Seeds by a power calculation on the pilot's paired differences d = {main} - {baseline} (points, one per "
    "target and seed; targets with every pilot seed of both done), per shots level of the pilot: sigma_w^2 = "
    "the mean over pilot targets of the between-seed variance of d (ddof=1); tau^2 = max(0, the between-target "
    "variance of the targets' seed-mean d (ddof=1) - sigma_w^2 / the pilot's seeds), the spread of the true "
    "per-target differences. With s seeds and T main targets the target-mean difference has standard error "
    "SE(s) = sqrt((tau^2 + sigma_w^2 / s) / T); a difference of {goal} points is detected with power {power} by "
    "a two-sided test at alpha {alpha} when {goal} / SE(s) >= c = t(1 - alpha/2, T - 1) + t({power}, T - 1) "
    "(Student t quantiles, the usual paired-t approximation), i.e. s >= sigma_w^2 / (T ({goal} / c)^2 - tau^2). "
    "The seeds are the fewest s satisfying that at every pilot shots level, at least {min_seeds} (the least a "
    "protocol plan takes) and capped at {max_seeds}; where no s <= {max_seeds} suffices (or T ({goal} / c)^2 <= "
    "tau^2: more seeds cannot beat the between-target spread) the cap is taken and the plan says the goal's "
    "power is not reached. Fixed before any run of the plans; never raised afterwards.")

ANALYSIS = (
    "Analysis (pitune_core/study/read/stats.py, evidence.py): per regime (4, 16 shots, full data) each target's "
    "score is its mean over every planned seed (a target enters a comparison once all its planned seeds are done "
    "for both approaches; targets, not seeds, are the independent units). Paired differences {main} minus each "
    "other approach over targets: mean, bootstrap 95% CI (BCa, 9,999 resamples, seeded; the rule), the "
    "percentile interval beside it as a sensitivity check ('fragile' where the two disagree on excluding 0), "
    "two-sided Wilcoxon signed-rank p, wins/ties/losses (tie: |d| <= {tie} points). A goal is met only where "
    "the BCa CI lies above 0. The best other transfer approach of a regime is the transfer approach (spec "
    "TRANSFER) with the highest mean over the targets on which {main} is complete (stats.best_other); the rows "
    "carry no validation-split score, so on the main set it is chosen on the same scores it is compared on "
    "(which can only favour the competitor), and on the confirmation set the approach chosen on the main set "
    "is kept (a choice made without the confirmation set). Robustness: every run's final model is also scored "
    "with no further training on shifted test sets of its family and corrupted copies of its own test set "
    "(runs.jsonl result.robustness); in-distribution, shifted and corrupted scores and effective robustness "
    "per approach, paired CIs as above. Recommendation check: {recommend} Goals (issue 28), on the main and the "
    "confirmation set: {main} - {baseline} >= +{goal} points at 4 and 16 shots with the CI above 0; {main} "
    "ahead of every other transfer approach with the CI above 0. Every planned run is reported; a missed goal "
    "is reported as missed.")


def seed_rule_text() -> str:
    return SEED_RULE.format(main=MAIN, baseline=BASELINE, goal=GOAL_POINTS, power=POWER, alpha=ALPHA,
                            min_seeds=MIN_SEEDS, max_seeds=MAX_SEEDS)


def analysis_text() -> str:
    return ANALYSIS.format(main=MAIN, baseline=BASELINE, tie=stats.TIE_POINTS, goal=GOAL_POINTS,
                           recommend=RECOMMEND_RULE)


# ----------------------------------------------------------------------------- the seed rule

def critical_value(n_targets: int, power: float = POWER, alpha: float = ALPHA) -> float:
    """``t(1 - alpha/2, T - 1) + t(power, T - 1)``: the standardised difference a two-sided test at
    ``alpha`` detects with ``power`` over ``n_targets`` targets."""
    if n_targets < 2:
        raise ValueError(f"a power calculation over targets needs at least 2 targets, got {n_targets}")
    df = n_targets - 1
    return float(sps.t.ppf(1 - alpha / 2, df) + sps.t.ppf(power, df))


def power_at(seeds: int, sigma_w2: float, tau2: float, n_targets: int, goal: float = GOAL_POINTS,
             alpha: float = ALPHA) -> float:
    """The power (same approximation) of detecting ``goal`` points with ``seeds`` seeds over ``n_targets``."""
    se = math.sqrt((tau2 + sigma_w2 / seeds) / n_targets)
    if se == 0:
        return 1.0
    df = n_targets - 1
    return float(sps.t.cdf(goal / se - sps.t.ppf(1 - alpha / 2, df), df))


def seeds_for_power(diffs: dict[str, Sequence[float]], n_targets: int, goal: float = GOAL_POINTS,
                    power: float = POWER, alpha: float = ALPHA, min_seeds: int = MIN_SEEDS,
                    max_seeds: int = MAX_SEEDS) -> dict:
    """:data:`SEED_RULE` for one shots level. ``diffs``: ``{pilot target: [d per seed]}`` (points, at least
    2 seeds each, the same number for every target; at least 2 targets). Returns the rule's inputs and
    result: ``sigma_w2, tau2, pilot_seeds, pilot_targets, c, needed`` (the real-valued s, inf when
    unreachable), ``seeds`` (the rule's s, capped), ``reached`` (s <= cap) and ``power`` at ``seeds``."""
    if len(diffs) < 2:
        raise ValueError(f"the seed rule needs at least 2 pilot targets with every seed done, got {len(diffs)}")
    k = {len(v) for v in diffs.values()}
    if len(k) != 1 or min(k) < 2:
        raise ValueError(f"the seed rule needs the same number (>= 2) of seeds per pilot target, got {sorted(k)}")
    k = k.pop()
    d = np.array([list(v) for v in diffs.values()], dtype=float)  # (targets, seeds)
    sigma_w2 = float(d.var(axis=1, ddof=1).mean())
    tau2 = max(0.0, float(d.mean(axis=1).var(ddof=1)) - sigma_w2 / k)
    c = critical_value(n_targets, power, alpha)
    room = n_targets * (goal / c) ** 2 - tau2
    needed = (sigma_w2 / room if sigma_w2 > 0 else 0.0) if room > 0 else math.inf
    reached = needed <= max_seeds
    s = min(max_seeds, max(min_seeds, math.ceil(needed - 1e-9))) if reached else max_seeds
    return {"sigma_w2": sigma_w2, "tau2": tau2, "pilot_seeds": k, "pilot_targets": len(diffs), "c": c,
            "needed": needed, "seeds": s, "reached": reached, "power": power_at(s, sigma_w2, tau2, n_targets, goal, alpha)}


def paired_seed_diffs(rows: Sequence[dict], shots, main: str = MAIN, baseline: str = BASELINE) -> dict[str, list[float]]:
    """``{target: [main - baseline per seed, points]}`` for one shots level, over the targets whose
    every listed seed of both approaches is done (seeds in order)."""
    score: dict[tuple[str, str, int], float | None] = {}
    seeds: dict[str, set[int]] = defaultdict(set)
    for r in rows:
        if r["shots"] == shots and r["approach"] in (main, baseline):
            score[(r["target"], r["approach"], r["seed"])] = r["score"] if r["status"] == "done" else None
            seeds[r["target"]].add(r["seed"])
    out = {}
    for t, ss in seeds.items():
        pairs = [(score.get((t, main, s)), score.get((t, baseline, s))) for s in sorted(ss)]
        if all(a is not None and b is not None for a, b in pairs):
            out[t] = [100.0 * (a - b) for a, b in pairs]
    return out


def protocol_seeds(rows: Sequence[dict], n_targets: int, n_confirm: int | None = None, **rule) -> dict:
    """:data:`SEED_RULE` over every shots level of the pilot's ``rows`` (parsed ``results.csv`` rows):
    ``{"seeds", "reached", "levels": {shots: seeds_for_power(...) (+ power on the confirmation set)}}``."""
    levels = {}
    for shots in sorted({r["shots"] for r in rows if r["shots"] != "full"}):
        lv = seeds_for_power(paired_seed_diffs(rows, shots), n_targets, **rule)
        levels[shots] = lv
    if not levels:
        raise ValueError("the pilot's results hold no few-shot row")
    seeds = max(lv["seeds"] for lv in levels.values())
    for lv in levels.values():
        lv["power_main"] = power_at(seeds, lv["sigma_w2"], lv["tau2"], n_targets, rule.get("goal", GOAL_POINTS),
                                    rule.get("alpha", ALPHA))
        if n_confirm is not None and n_confirm >= 2:
            lv["power_confirm"] = power_at(seeds, lv["sigma_w2"], lv["tau2"], n_confirm,
                                           rule.get("goal", GOAL_POINTS), rule.get("alpha", ALPHA))
    return {"seeds": seeds, "reached": all(lv["reached"] for lv in levels.values()), "levels": levels}


# ----------------------------------------------------------------------------- the plans

def _recipe() -> dict:
    from pitune_core.tune.baselines import Recipe  # lazy: loads torch

    return asdict(Recipe(budget="equal"))


def _ground_truth(groundtruth: str | Path, confirm: str | Path) -> tuple[list[str], list[str], dict]:
    main, held = load_groundtruth_plan(groundtruth), load_groundtruth_plan(confirm)
    both = set(main.targets) & set(held.targets)
    if both:
        raise PlanError(f"{groundtruth} and {confirm} share target(s) {', '.join(sorted(both))}")
    source = {"groundtruth": str(groundtruth), "groundtruth_sha256": sha256_file(groundtruth),
              "confirm": str(confirm), "confirm_sha256": sha256_file(confirm)}
    return list(main.targets), list(held.targets), source


def pilot_draw(targets: list[str], per_modality: int, seed: int) -> list[str]:
    """``per_modality`` targets of each modality (modalities in order of their first target), drawn without
    replacement with ``default_rng(seed)``; returned in the order of ``targets``."""
    rng = np.random.default_rng(seed)
    by_mod: dict[str, list[str]] = {}
    for t in targets:
        by_mod.setdefault(get_task(t).modality, []).append(t)
    picked = set()
    for members in by_mod.values():
        take = min(per_modality, len(members))
        picked.update(members[i] for i in sorted(rng.choice(len(members), size=take, replace=False)))
    return [t for t in targets if t in picked]


def draft_pilot(groundtruth: str | Path = "plans/groundtruth-v3.json",
                confirm: str | Path = "plans/groundtruth-v3-confirm.json", name: str = "protocol-v3-pilot",
                per_modality: int = 2, draw_seed: int = PILOT_DRAW_SEED) -> ProtocolPlan:
    """The pilot plan (module docstring, step 1); nothing run."""
    main, _held, source = _ground_truth(groundtruth, confirm)
    eligible = [t for t in main if min_class_train(t) >= max(PILOT_SHOTS)]
    targets = pilot_draw(eligible, per_modality, draw_seed)
    text = (f"A pilot: {per_modality} target(s) per modality drawn without replacement with "
            f"numpy.random.default_rng({draw_seed}) from the main targets of {groundtruth} (every class with >= "
            f"{max(PILOT_SHOTS)} training examples; modalities in the order of their first main target, targets in "
            f"plan order); never a target of its confirmation plan {confirm}.")
    notes = (f"Protocol pilot of issue 28, declared before any protocol run on this suite. Its only use is the "
             f"number of seeds of the main and confirmation protocol plans (pitune_core/study/"
             f"preregister_protocol.py): {seed_rule_text()} Its results are never evidence. Seeds {PILOT_SEEDS} "
             f"are not seeds of the main plans (their few-shot samples are others); shots {PILOT_SHOTS}; the core "
             f"approaches only; recipe budget 'equal' (every approach tunes the whole budget on the target after "
             f"selection; a selecting approach's own expert is its selection cost, counted apart); robustness "
             f"off. Runs on a GPU when one is lent, else --workers auto.")
    return ProtocolPlan(name=name, rule={"text": text, "draw_seed": draw_seed, "per_modality": per_modality,
                                         "from": source},
                        targets=targets, shots=list(PILOT_SHOTS), seeds=list(PILOT_SEEDS), core=list(CORE), extra=[],
                        extra_shots=[16], k=DEFAULT_K, method="lora", recipe=_recipe(), notes=notes, robustness=False,
                        pilot=True)


def _pilot_rows(pilot: ProtocolPlan, results: str | Path) -> list[dict]:
    rows = read_protocol_csv(results)
    planned = {(j["target"], j["approach"], "full" if j["shots"] is None else j["shots"], j["seed"]) for j in pilot.jobs()}
    have = {(r["target"], r["approach"], r["shots"], r["seed"]) for r in rows}
    if have != planned:
        raise PlanError(f"{results} is not the results of pilot plan {pilot.name}: {len(have - planned)} row(s) "
                        f"not planned, {len(planned - have)} planned run(s) absent")
    return rows


def _fmt_level(shots, lv: dict) -> str:
    need = "unreachable" if math.isinf(lv["needed"]) else f"{lv['needed']:.2f}"
    conf = f", {lv['power_confirm']:.2f} on the confirmation set" if "power_confirm" in lv else ""
    return (f"{shots} shots: {lv['pilot_targets']} pilot targets x {lv['pilot_seeds']} seeds, sigma_w^2 = "
            f"{lv['sigma_w2']:.2f}, tau^2 = {lv['tau2']:.2f}, c = {lv['c']:.4f}, s >= {need} -> {lv['seeds']} "
            f"(power at the plan's seeds {lv['power_main']:.2f} on the main set{conf})")


def draft_plans(pilot_plan: str | Path, pilot_results: str | Path, name: str = "protocol-v3",
                groundtruth: str | Path = "plans/groundtruth-v3.json",
                confirm: str | Path = "plans/groundtruth-v3-confirm.json") -> tuple[ProtocolPlan, ProtocolPlan, dict]:
    """``(main plan, confirmation plan, the derivation)`` (module docstring, steps 2-3); nothing run."""
    pilot = load_protocol_plan(pilot_plan)
    if not pilot.pilot:
        raise PlanError(f"{pilot_plan} is not a pilot plan (its 'pilot' is not true)")
    rows = _pilot_rows(pilot, pilot_results)
    main_all, held_all, source = _ground_truth(groundtruth, confirm)
    need = max(s for s in SHOTS if s is not None)
    dropped = {t: f"no {need}-shot sample: a class has {n} training example(s)"
               for t in main_all + held_all if (n := min_class_train(t)) < need}
    main = [t for t in main_all if t not in dropped]
    held = [t for t in held_all if t not in dropped]
    seeds = protocol_seeds(rows, len(main), len(held))
    n = seeds["seeds"]
    levels = "; ".join(_fmt_level(s, lv) for s, lv in seeds["levels"].items())
    verdict = ("reached at every pilot shots level" if seeds["reached"] else
               f"NOT reached at every pilot shots level: the cap of {MAX_SEEDS} is taken and the report must say the "
               "goal's power was not reached")
    derivation = {"main": main, "confirmation": held, "dropped": dropped, "seeds": n, "reached": seeds["reached"],
                  "levels": {str(k): v for k, v in seeds["levels"].items()}, "pilot_plan": str(pilot_plan),
                  "pilot_results": str(pilot_results), "pilot_results_sha256": sha256_file(pilot_results)}
    why = "; ".join(f"{t}: {w}" for t, w in dropped.items()) or "none"
    text = (f"The main targets of {groundtruth} (main plan) / of its confirmation plan {confirm} (confirmation "
            f"plan), as the ground truth's rule drew them (pitune_core/study/preregister.py), less any target "
            f"without a {need}-shot sample (dropped: {why}).")
    notes = (f"Issue 28's few-shot comparison, declared with its confirmation plan and before any run of either "
             f"(the pilot {pilot.name} excepted). Core approaches ({', '.join(CORE)}) on every target x shots x "
             f"seed; the recipe's ablations ({', '.join(ABLATIONS)}; pi-tuning-no-own is pi-tuning without its "
             f"own expert) and the other baselines ({', '.join(OTHERS)}) at {EXTRA_SHOTS[0]} shots. Recipe budget "
             f"'equal': every approach tunes the whole budget on the target after selection; a selecting "
             f"approach's own expert (and its Fisher) is its selection cost, reported apart for every selecting "
             f"approach. Robustness on. {seed_rule_text()} Inputs: the pilot {pilot_plan}'s results "
             f"{pilot_results} (sha256 {derivation['pilot_results_sha256'][:16]}), T = {len(main)} main targets: "
             f"{levels}. {n} seeds; the goal's power is {verdict}. {analysis_text()} The confirmation set is "
             f"run and looked at ONCE, after the main analysis is frozen (committed), with the same settings. "
             f"Runs on a GPU when one is lent (device recorded per row; a sample of GPU rows rerun on CPU), else "
             f"--workers auto.")
    base = dict(shots=list(SHOTS), seeds=list(range(n)), core=list(CORE), extra=list(ABLATIONS + OTHERS),
                extra_shots=list(EXTRA_SHOTS), k=DEFAULT_K, method="lora", recipe=_recipe(), robustness=True)
    rule = {"text": text, "from": source, "seed_rule": seed_rule_text(), "seeds_derivation": derivation}
    main_plan = ProtocolPlan(name=name, rule=rule, targets=main, notes=notes, **base)
    held_plan = ProtocolPlan(name=f"{name}-confirm", rule=rule, targets=held, notes=notes, **base)
    return main_plan, held_plan, derivation


def write_new(path: str | Path, plan: ProtocolPlan) -> Path:
    """Write ``plan`` to ``path``, refusing to overwrite any existing file (a committed plan never changes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(path, "x", encoding="utf-8") as f:
            f.write(plan_to_json(plan))
    except FileExistsError:
        raise PlanError(f"{path} exists: a plan file is never overwritten (give another --out)") from None
    return path


def json_ready(derivation: dict) -> str:
    """The derivation as JSON (inf as null)."""
    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        return x
    return json.dumps(clean(derivation), indent=1)
