"""Draft a ground-truth plan before any of its runs: targets by the committed rule, a held-out confirmation
set by a seeded draw, and the number of seeds from a pilot by a stated reliability calculation (issue 28).

The rule, in the order it is applied (every input is a file of the study, so anyone can re-derive it):

1. **Targets**: :func:`pitune_core.study.targets.study_targets` on the study's ``experts/summary.csv``
   (drops tasks at chance or at ceiling), less any task with a class that has no training example (no
   few-shot sample of it exists). Every admitted expert is a source.
2. **Confirmation set**: one target per family, drawn with ``numpy.random.default_rng(confirm_seed)``
   from that family's targets (in registry order); a family with a single target gives it to the
   confirmation set only if another family still leaves >= ``min_main`` main targets. Its results are
   not looked at until the main analysis is frozen; it is then measured once with the same plan.
3. **Seeds**: the pilot's per-seed gain matrices give each pilot target's single-seed split-half
   reliability (:func:`pitune_core.predict.quality.seed_reliability` on a 2-seed pilot: one seed per
   half); :func:`pitune_core.predict.quality.seeds_for_reliability` turns them into the fewest seeds
   whose Spearman–Brown reliability, averaged over targets, reaches ``goal``. Fixed in the plan; never
   raised afterwards (if the measured reliability misses the goal, the report says so).

Budget, predictors and target data sizes are copied from the pilot's plan unless given.
"""

from __future__ import annotations

import csv
import functools
import json
from pathlib import Path

import numpy as np

from pitune_core.data.tasks import get_task
from pitune_core.spec.vocab import STUDY_SHOTS
from pitune_core.predict.quality import seed_reliability, seeds_for_reliability, spearman_brown
from pitune_core.study.targets import study_targets
from pitune_core.study.transfer import gain_matrices, load_plan


@functools.lru_cache(maxsize=None)  # a drafter asks for every target more than once; the data version fixes it
def _class_counts(task: str) -> tuple[int, ...]:
    spec = get_task(task)
    return tuple(int(c) for c in np.bincount(spec.load().train.labels, minlength=spec.num_classes))


def min_class_train(task: str) -> int:
    """The fewest training examples of any class of ``task``: the most shots a few-shot sample of it can have."""
    return min(_class_counts(task))


def rarest_class(task: str) -> str:
    """The label of ``task``'s class with the fewest training examples."""
    counts = _class_counts(task)
    return get_task(task).labels[counts.index(min(counts))]


def pilot_reliability(pilot_plan: str | Path, pairs: str | Path) -> dict:
    """Each pilot target's single-seed split-half reliability, from the pilot's ``pairs.jsonl``."""
    plan = load_plan(pilot_plan)
    per_seed = gain_matrices(pairs, plan.tasks, key=plan.key())
    if len(per_seed) != 2:
        raise ValueError(f"the seed rule reads a 2-seed pilot (one seed per half); {pairs} has {len(per_seed)} seeds")
    G = np.stack([per_seed[s] for s in sorted(per_seed)])
    targets = plan.targets or plan.tasks
    rows = [plan.tasks.index(t) for t in targets]
    rel = seed_reliability(G[:, rows, :], targets, plan.tasks)
    return {t: v["r_half"] for t, v in rel["per_target"].items()}


def confirmation_draw(targets: list[str], seed: int, min_main: int = 12) -> list[str]:
    """One target per family (seeded draw, families in registry order of their first target)."""
    rng = np.random.default_rng(seed)
    families: dict[str, list[str]] = {}
    for t in targets:
        families.setdefault(get_task(t).family, []).append(t)
    held = []
    for fam, members in families.items():
        pick = members[int(rng.integers(len(members)))]
        if len(members) == 1 and len(targets) - len(held) - 1 < min_main:
            continue
        held.append(pick)
    return held


def draft_plans(study: str | Path, pilot_plan: str | Path, pilot_pairs: str | Path, name: str, goal: float = 0.8,
                confirm_seed: int = 2028, max_seeds: int = 12, predictors: list[str] | None = None) -> tuple[dict, dict, dict]:
    """``(main plan, confirmation plan, the derivation)`` as plan-file dicts, nothing run."""
    study = Path(study)
    targets, dropped = study_targets(study / "experts" / "summary.csv")
    for t in list(targets):  # a few-shot sample needs at least one training example of every class
        if min_class_train(t) < 1:
            targets.remove(t)
            dropped[t] = f"no few-shot sample: class {rarest_class(t)!r} has no training example"
    held = confirmation_draw(targets, confirm_seed)
    main = [t for t in targets if t not in held]
    r = pilot_reliability(pilot_plan, pilot_pairs)
    n = seeds_for_reliability(list(r.values()), goal=goal, max_seeds=max_seeds)
    pilot = json.loads(Path(pilot_plan).read_text())
    with open(study / "experts" / "summary.csv", newline="", encoding="utf-8") as f:
        tasks = [row["task"] for row in csv.DictReader(f) if row.get("method", "lora") == "lora"]
    expected = float(np.mean(spearman_brown(np.clip(list(r.values()), 0, None), float(n))))
    derivation = {"targets": targets, "dropped": dropped, "confirmation": held, "main": main,
                  "pilot_r_single": r, "goal": goal, "seeds": n, "max_seeds": max_seeds,
                  "expected_reliability": expected, "reached": expected >= goal}
    base = {"tasks": tasks, "method": pilot["method"], "shots": pilot["shots"], "steps": pilot["steps"],
            "batch_size": pilot["batch_size"], "eval_limit": pilot["eval_limit"], "seeds": list(range(n)),
            "predictors": predictors if predictors is not None else pilot.get("predictors", []),
            "target_shots": list(STUDY_SHOTS), "predictor_seeds": list(range(4)), "fisher_n": pilot["fisher_n"],
            "k": pilot["k"]}
    return ({"name": name, "notes": "", "targets": main, **base},
            {"name": f"{name}-confirm", "notes": "", "targets": held, **base}, derivation)
