"""The few-shot protocol's plans drafted before their runs (pitune_core/study/preregister_protocol.py): the
pilot's seeded draw from the ground truth's main targets, the seed rule's power calculation on hand-computed
numbers, the main and confirmation plans from a synthetic pilot's results, and no plan file overwritten."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from pitune_core.cli.main import main as cli
from pitune_core.data.tasks import get_task
from pitune_core.spec.vocab import CORE
from pitune_core.study import preregister_protocol as P
from pitune_core.study import protocol
from pitune_core.study.transfer import load_plan as load_groundtruth_plan

GT, GT_CONFIRM = "plans/groundtruth-v3.json", "plans/groundtruth-v3-confirm.json"
PILOT_FILE = "plans/protocol-v3-pilot.json"

# Hand-computed case (T = 19 main targets): t(0.975, 18) = 2.1009 and t(0.80, 18) = 0.8620 (t tables), c = 2.9629,
# (4.5 / c)^2 = 2.3067, 19 x that = 43.83. Pilot differences per target (2 seeds): (-8, 8), (1, 17), (10, 26):
# between-seed variance 16^2 / 2 = 128 each -> sigma_w^2 = 128; seed means 0, 9, 18 have variance 81 ->
# tau^2 = 81 - 128 / 2 = 17; s >= 128 / (43.83 - 17) = 4.77 -> 5 seeds.
CASE = {"a": [-8.0, 8.0], "b": [1.0, 17.0], "c": [10.0, 26.0]}
# a level the floor decides: between-seed variance 8, no between-target spread -> s >= 8 / 43.83 = 0.18 -> 3
EASY = {"a": [0.0, 4.0], "b": [1.0, 5.0], "c": [2.0, 6.0]}


def test_the_critical_value_is_the_t_quantiles_sum():
    assert P.critical_value(19) == pytest.approx(2.1009 + 0.8620, abs=2e-4)
    with pytest.raises(ValueError, match="at least 2 targets"):
        P.critical_value(1)


def test_the_seed_rule_on_a_hand_computed_case():
    r = P.seeds_for_power(CASE, 19)
    assert r["sigma_w2"] == pytest.approx(128.0) and r["tau2"] == pytest.approx(17.0)
    assert r["needed"] == pytest.approx(128 / (19 * (4.5 / (2.1009 + 0.8620)) ** 2 - 17), rel=1e-3)
    assert r["needed"] == pytest.approx(4.77, abs=0.01) and r["seeds"] == 5 and r["reached"]
    # the fewest seeds: 5 reach 80 % power, 4 do not
    assert P.power_at(5, 128, 17, 19) >= 0.8 > P.power_at(4, 128, 17, 19)
    assert r["power"] == pytest.approx(P.power_at(5, 128, 17, 19))
    easy = P.seeds_for_power(EASY, 19)
    assert easy["sigma_w2"] == pytest.approx(8.0) and easy["tau2"] == 0.0 and easy["seeds"] == P.MIN_SEEDS


def test_the_seed_rule_caps_and_says_so():
    spread = {"a": [-40.0, -40.0], "b": [0.0, 0.0], "c": [40.0, 40.0]}  # tau^2 = 1600 > 43.83: no s suffices
    r = P.seeds_for_power(spread, 19)
    assert math.isinf(r["needed"]) and not r["reached"] and r["seeds"] == P.MAX_SEEDS
    noisy = {"a": [-60.0, 60.0], "b": [-60.0, 60.0], "c": [-60.0, 60.0]}  # 7200 / 43.83 = 164 seeds
    r = P.seeds_for_power(noisy, 19)
    assert r["needed"] > P.MAX_SEEDS and not r["reached"] and r["seeds"] == P.MAX_SEEDS
    with pytest.raises(ValueError, match="at least 2 pilot targets"):
        P.seeds_for_power({"a": [1.0, 2.0]}, 19)
    with pytest.raises(ValueError, match="same number"):
        P.seeds_for_power({"a": [1.0, 2.0], "b": [1.0, 2.0, 3.0]}, 19)


def _pilot_plan(targets) -> protocol.ProtocolPlan:
    return protocol.ProtocolPlan(name="pilot-test", rule={"text": "test"}, targets=list(targets), shots=[4, 16],
                                 seeds=[1000, 1001], core=list(CORE), extra=[], pilot=True)


def _results(path: Path, plan: protocol.ProtocolPlan, diffs: dict, drop: tuple = ()) -> Path:
    """A results.csv of ``plan``: target-only 0.5, pi-tuning 0.5 + d / 100 (``diffs[shots][target][seed index]``),
    the other approaches 0.4; rows in ``drop`` (target, approach, shots, seed) are 'missing'."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=protocol.RESULT_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for j in plan.jobs():
            d = diffs[j["shots"]][j["target"]][plan.seeds.index(j["seed"])]
            score = {"target-only": 0.5, "pi-tuning": 0.5 + d / 100}.get(j["approach"], 0.4)
            missing = (j["target"], j["approach"], j["shots"], j["seed"]) in drop
            w.writerow({**j, "status": "missing" if missing else "done", "score": "" if missing else score,
                        "metric": "accuracy"})
    return path


def test_paired_differences_keep_only_targets_with_every_seed_of_both():
    plan = _pilot_plan(["mnist", "movie_sentiment", "fashion_question"])
    targets = dict(zip(plan.targets, CASE.values()))
    rows = [{"target": t, "approach": a, "shots": 4, "seed": s, "status": "done",
             "score": 0.5 + (targets[t][i] / 100 if a == "pi-tuning" else 0)}
            for t in plan.targets for a in ("pi-tuning", "target-only") for i, s in enumerate(plan.seeds)]
    rows[-1] = {**rows[-1], "status": "failed", "score": None}  # fashion_question's target-only, seed 1001
    d = P.paired_seed_diffs(rows, 4)
    assert set(d) == {"mnist", "movie_sentiment"}
    assert d["mnist"] == pytest.approx([-8.0, 8.0]) and d["movie_sentiment"] == pytest.approx([1.0, 17.0])


def test_main_and_confirmation_plans_from_a_synthetic_pilot(tmp_path):
    gt, held = load_groundtruth_plan(GT).targets, load_groundtruth_plan(GT_CONFIRM).targets
    plan = _pilot_plan(["mnist", "movie_sentiment", "fashion_question"])
    pf = tmp_path / "pilot.json"
    pf.write_text(protocol.plan_to_json(plan))
    targets = dict(zip(plan.targets, CASE.values()))
    res = _results(tmp_path / "results.csv", plan, {4: targets, 16: dict(zip(plan.targets, EASY.values()))})
    main, confirm, why = P.draft_plans(pf, res, name="proto-test")
    # targets: the ground truth's, less those without a 16-shot sample (reuters_topic: a class has 5 examples)
    assert main.targets == [t for t in gt if t not in why["dropped"]] and len(main.targets) == 19
    assert "reuters_topic" in why["dropped"] and confirm.targets == [t for t in held if t != "reuters_topic"]
    assert not set(main.targets) & set(confirm.targets)
    # seeds: the 4-shot level decides (5, hand-computed above for T = 19), the 16-shot level gives the floor
    assert why["levels"]["4"]["seeds"] == 5 and why["levels"]["16"]["seeds"] == 3 and why["seeds"] == 5
    assert main.seeds == confirm.seeds == [0, 1, 2, 3, 4] and why["reached"]
    assert why["levels"]["4"]["power_confirm"] < why["levels"]["4"]["power_main"]  # 5 targets, not 19
    for p in (main, confirm):
        assert p.robustness and not p.pilot and p.shots == [4, 16, None] and p.extra_shots == [16]
        assert p.core == list(CORE) and "pi-tuning-no-own" in p.extra and p.recipe["budget"] == "equal"
        assert "sigma_w^2 = 128.00, tau^2 = 17.00" in p.notes and "tie" in p.notes and "regret" in p.notes
        path = P.write_new(tmp_path / f"{p.name}.json", p)
        assert protocol.load_plan(path) == p  # the drafted file loads as a plan, robustness and all
        with pytest.raises(protocol.PlanError, match="never overwritten"):
            P.write_new(path, p)
    # results of another plan are refused, as is a plan that is not a pilot
    short = _results(tmp_path / "short.csv", _pilot_plan(plan.targets[:2]), {4: targets, 16: targets})
    with pytest.raises(protocol.PlanError, match="not the results of pilot plan"):
        P.draft_plans(pf, short)
    (tmp_path / "main.json").write_text(protocol.plan_to_json(main))
    with pytest.raises(protocol.PlanError, match="not a pilot plan"):
        P.draft_plans(tmp_path / "main.json", res)


def test_the_committed_pilot_plan_is_what_the_drafter_gives():
    """plans/protocol-v3-pilot.json re-derives from the ground truth's plans; its targets are main targets
    (never confirmation targets), at least one per modality, drawn by the seeded rule."""
    plan = P.draft_pilot(GT, GT_CONFIRM)
    assert Path(PILOT_FILE).read_text() == protocol.plan_to_json(plan)
    committed = protocol.load_plan(PILOT_FILE)
    assert committed.pilot and not committed.robustness and committed.seeds == P.PILOT_SEEDS
    assert committed.shots == [4, 16] and committed.core == list(CORE) and not committed.extra
    assert committed.recipe["budget"] == "equal"
    gt, held = load_groundtruth_plan(GT).targets, load_groundtruth_plan(GT_CONFIRM).targets
    assert set(committed.targets) <= set(gt) and not set(committed.targets) & set(held)
    mods = [get_task(t).modality for t in committed.targets]
    assert sorted(set(mods)) == ["language", "vision", "vision-language"] and all(mods.count(m) == 2 for m in set(mods))
    assert P.pilot_draw(gt, 2, 7) == P.pilot_draw(gt, 2, 7)
    assert any(P.pilot_draw(gt, 2, s) != committed.targets for s in range(3))  # the seed matters


def test_the_draft_command_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "p.json"
    out.write_text("{}")
    assert cli(["study", "draft", "--pilot", "--out", str(out)]) == 2
    assert "never overwritten" in capsys.readouterr().err and out.read_text() == "{}"
    assert cli(["study", "draft"]) == 2
    assert "--pilot-results" in capsys.readouterr().err
    fresh = tmp_path / "q.json"
    assert cli(["study", "draft", "--pilot", "--out", str(fresh)]) == 0
    assert json.loads(capsys.readouterr().out)["written"] == str(fresh)
    assert fresh.read_text() == Path(PILOT_FILE).read_text()
