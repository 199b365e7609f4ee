"""Drafting a ground-truth plan before its runs (pitune_core/study/preregister.py): targets by the committed
rule, a seeded confirmation draw of one target per family, seeds from the shipped pilot by the stated
reliability rule; the drafted files load as plans."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pitune_core.data.tasks import get_task
from pitune_core.predict.quality import spearman_brown
from pitune_core.study.preregister import confirmation_draw, draft_plans, pilot_reliability
from pitune_core.study.targets import study_targets
from pitune_core.study.transfer import load_plan

STUDY = Path("precomputed")
PILOT = Path("plans/relatedness-pilot.json")
PAIRS = STUDY / "groundtruth" / "relatedness-pilot" / "pairs.jsonl"


def test_the_confirmation_draw_is_seeded_and_takes_at_most_one_target_per_family():
    targets, _ = study_targets(STUDY / "experts" / "summary.csv")
    a, b = confirmation_draw(targets, 7), confirmation_draw(targets, 7)
    assert a == b and set(a) <= set(targets)
    fams = [get_task(t).family for t in a]
    assert len(fams) == len(set(fams)) >= 4
    assert any(confirmation_draw(targets, s) != a for s in range(8, 20))  # the seed matters


def test_drafted_plans_split_the_targets_and_take_their_seed_count_from_the_pilot(tmp_path):
    main, confirm, why = draft_plans(STUDY, PILOT, PAIRS, "gt-test", goal=0.8, confirm_seed=3, max_seeds=12)
    targets, _ = study_targets(STUDY / "experts" / "summary.csv")
    assert "tux_category" in targets and "tux_category" in why["dropped"]  # a class with no training example
    assert set(main["targets"]) | set(confirm["targets"]) == set(targets) - {"tux_category"}
    assert not set(main["targets"]) & set(confirm["targets"])
    r = pilot_reliability(PILOT, PAIRS)
    assert set(r) == set(load_plan(PILOT).targets)
    n = why["seeds"]
    assert main["seeds"] == confirm["seeds"] == list(range(n))
    clipped = np.clip(list(r.values()), 0, None)
    if why["reached"]:  # the fewest seeds that reach the goal
        assert np.mean(spearman_brown(clipped, float(n))) >= 0.8
        assert n == 1 or np.mean(spearman_brown(clipped, float(n - 1))) < 0.8
    for plan in (main, confirm):
        p = tmp_path / f"{plan['name']}.json"
        p.write_text(json.dumps(plan))
        loaded = load_plan(p)
        assert loaded.shots == load_plan(PILOT).shots and loaded.steps == load_plan(PILOT).steps
