"""The recommendation rule fixed on a main set and checked on a confirmation set
(pitune_core/study/read/recommend.py), on synthetic protocol rows with hand-computed regrets."""

from __future__ import annotations

import math

import pytest

from pitune_core.study.read import recommend, stats


def _rows(scores: dict, shots=4, seeds=(0, 1), missing=()) -> list[dict]:
    """Rows of ``{approach: {target: points}}`` (seed s scores points + s - 0.5, so the seed mean is the points);
    (approach, target, seed) in ``missing`` is not done."""
    out = []
    for a, per in scores.items():
        for t, pts in per.items():
            for s in seeds:
                done = (a, t, s) not in missing
                out.append({"target": t, "approach": a, "shots": shots, "seed": s, "status": "done" if done else "missing",
                            "score": (pts + s - 0.5) / 100 if done else None})
    return out


MAIN = {"pi-tuning": {"m1": 70, "m2": 60, "m3": 50}, "target-only": {"m1": 64, "m2": 55, "m3": 45},
        "lorahub": {"m1": 66, "m2": 58, "m3": 40}}
CONFIRM = {"pi-tuning": {"c1": 70, "c2": 50, "c3": 60}, "target-only": {"c1": 66, "c2": 54, "c3": 60.3},
           "lorahub": {"c1": 72, "c2": 48, "c3": 58}}


def test_the_rule_takes_the_best_main_mean_and_evaluates_it_on_the_confirmation_set():
    rule = recommend.fix_rule(_rows(MAIN))
    assert rule[4]["approach"] == "pi-tuning" and rule[4]["mean"] == pytest.approx(60.0) and rule[4]["targets"] == 3
    res = recommend.evaluate({4: "pi-tuning"}, _rows(CONFIRM))[4]
    # regret per target: c1 best lorahub 72 - 70 = 2; c2 best target-only 54 - 50 = 4; c3 best target-only 60.3 - 60
    assert [p["regret"] for p in res["per_target"]] == pytest.approx([2.0, 4.0, 0.3])
    assert [p["best"] for p in res["per_target"]] == ["lorahub", "target-only", "target-only"]
    assert res["n"] == 3 and res["regret"] == pytest.approx(6.3 / 3)
    lo, hi = res["regret_ci"]
    assert lo == pytest.approx(stats.bootstrap_ci([2.0, 4.0, 0.3])[0]) and lo <= res["regret"] <= hi
    vs = res["vs_baseline"]  # pi-tuning - target-only: +4, -4, -0.3 -> one win, one tie (|d| <= 0.5), one loss
    assert (vs["wins"], vs["ties"], vs["losses"]) == (1, 1, 1) and vs["mean"] == pytest.approx(-0.1)


def test_target_only_wins_a_tie_with_the_best():
    close = {**MAIN, "target-only": {"m1": 69.6, "m2": 59.6, "m3": 50}}  # mean 59.73: within 0.5 of 60
    rule = recommend.fix_rule(_rows(close))
    assert rule[4]["approach"] == "target-only" and set(rule[4]["tied"]) == {"pi-tuning", "target-only"}
    apart = {**MAIN, "target-only": {"m1": 69.0, "m2": 59.0, "m3": 50}}  # mean 59.33: more than a tie
    assert recommend.fix_rule(_rows(apart))[4]["approach"] == "pi-tuning"
    res = recommend.evaluate({4: "target-only"}, _rows(CONFIRM))[4]
    assert res["vs_baseline"]["ties"] == 3 and res["vs_baseline"]["mean"] == 0.0


def test_incomplete_targets_do_not_rank_or_count():
    # lorahub misses a seed of m3: every approach is then ranked on the targets all have complete (m1, m2), so
    # no approach is ranked on an easier subset
    rows = _rows(MAIN, missing={("lorahub", "m3", 1)})
    rule = recommend.fix_rule(rows)
    assert rule[4]["targets"] == 2 and rule[4]["approach"] == "pi-tuning"  # 65 > 62 > 59.5 over m1, m2
    conf = _rows(CONFIRM, missing={("pi-tuning", "c2", 0)})
    res = recommend.evaluate({4: "pi-tuning"}, conf)[4]
    assert [p["target"] for p in res["per_target"]] == ["c1", "c3"] and res["regret"] == pytest.approx(1.15)


def test_full_data_rows_read_alike_in_either_spelling_and_check_runs_both_rules():
    main = _rows(MAIN, shots=None) + _rows(MAIN, shots=4)
    confirm = _rows(CONFIRM, shots="full") + _rows(CONFIRM, shots=4)
    out = recommend.check(main, confirm)
    assert set(out["rule"]) == {4, "full"} and out["confirm"]["full"]["regret"] == pytest.approx(2.1)
    # the dashboard's rule, fixed on the main set: pi-tuning's CI over 3 targets vs target-only is decided by
    # evidence.recommend; whatever it picks is evaluated on the same confirmation targets
    assert set(out["dashboard"]) == {4, "full"}
    for shots, res in out["dashboard"].items():
        assert res["n"] == 3 and res["regret"] == pytest.approx(out["always"][shots][res["approach"]])
    assert out["always"][4] == pytest.approx({"pi-tuning": 2.1, "target-only": (6 + 0 + 0) / 3,
                                              "lorahub": (0 + 6 + 2.3) / 3})
    assert math.isnan(recommend.evaluate({4: "arrow"}, confirm)[4]["regret"])  # not run: no target counts


def test_the_recommend_check_command_reads_two_results_files(tmp_path, capsys):
    import csv
    import json

    from pitune_core.cli.main import main as cli

    paths = []
    for name, scores in (("main", MAIN), ("confirm", CONFIRM)):
        path = tmp_path / f"{name}.csv"
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=("target", "approach", "shots", "seed", "status", "score"))
            w.writeheader()
            w.writerows(_rows(scores))
        paths.append(str(path))
    assert cli(["study", "recommend-check", "--main", paths[0], "--confirm", paths[1]]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rule"]["4"]["approach"] == "pi-tuning" and out["confirm"]["4"]["regret"] == pytest.approx(2.1)
