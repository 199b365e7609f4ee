"""The pre-registered comparison in the dashboard: Study.protocol_* (reader), the evidence summary
and recommendation (pitune_core.study.read.evidence), the paired-difference dot plot and the compare tab.

Results files are synthetic with known numbers (12 targets × 3 seeds; π-Tuning = target-only + 4, 5
or 6 points by target, so the paired mean is exactly +5.0), so every expected value below is
computed by hand, not read back from the code under test. The Streamlit tests run on a copy of the
shipped study (``precomputed/``, never modified) with a ``protocol/<plan>/results.csv`` added and the
copy's manifest extended to list it, as a precompute run over that folder would.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest
from studycopy import copy_without_measurements

from dashboard.figures import paired_diff_figure
from pitune_core.common import sha256_file
from pitune_core.study.read import evidence
from pitune_core.study.protocol import RESULT_COLUMNS
from pitune_core.study.read.reader import Study

REPO = Path(__file__).resolve().parent.parent
APP = str(REPO / "dashboard" / "app.py")
SHIPPED = Path(os.environ.get("PITUNE_TEST_STUDY") or REPO / "precomputed")
PLAN = "few-shot-test"
TARGETS = [f"task_{i:02d}" for i in range(12)]
SEEDS = (0, 1, 2)


def _base(i: int, seed: int) -> float:
    return 0.50 + 0.02 * i + 0.001 * seed


def _scores(i: int, seed: int, peft_offset: float) -> dict[str, float]:
    """Per approach for target i: π-Tuning = target-only + 4/5/6 points (by i % 3); best-single ties
    π-Tuning on average (−1, −1, +2 points); peft-linear = target-only + ``peft_offset``."""
    b = _base(i, seed)
    pi = b + 0.05 + 0.01 * (i % 3 - 1)
    return {"pi-tuning": pi, "target-only": b, "best-single": b + 0.05 + 0.01 * ((i + 1) % 3 - 1),
            "peft-linear": b + peft_offset}


def write_results(path: Path, peft_offset: float = 0.02, shots=(4, 16), not_done: dict | None = None) -> Path:
    """A protocol results.csv (the writer's columns) with every planned row; ``not_done`` maps
    (target, approach, shots, seed) to "missing" or "failed"."""
    not_done = not_done or {}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=RESULT_COLUMNS)
        w.writeheader()
        for s in shots:
            for seed in SEEDS:
                for i, t in enumerate(TARGETS):
                    for a, score in _scores(i, seed, peft_offset).items():
                        status = not_done.get((t, a, s, seed), "done")
                        row = {"key": f"k{i}{a}{s}{seed}", "target": t, "approach": a, "shots": s, "seed": seed,
                               "status": status}
                        if status == "done":
                            row.update(score=f"{score:.4f}", accuracy=f"{score:.4f}", metric="accuracy",
                                       steps_select=0, steps_tune=30, steps_total=30, sources="a|b",
                                       selection="val", time_s=1.5, cpu_s=2.0)
                        w.writerow(row)
    return path


def _drop(path: Path, approach: str) -> None:
    """Remove one approach's rows (as if the plan had not included it)."""
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["approach"] != approach]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=RESULT_COLUMNS)
        w.writeheader()
        w.writerows(rows)


def _regime(summary: dict, name: str) -> dict:
    return next(g for g in summary["regimes"] if g["regime"] == name)


def _diff(regime: dict, b: str) -> dict:
    return next(d for d in regime["diffs"] if d["b"] == b)


# ----------------------------------------------------------------------------- reader + evidence

def test_winning_case_recommends_pi_tuning(tmp_path):
    write_results(tmp_path / "protocol" / PLAN / "results.csv", peft_offset=0.02)
    study = Study(tmp_path)
    assert study.protocol_plans() == [PLAN]
    rows = study.protocol_results(PLAN)
    assert len(rows) == 2 * 3 * 12 * 4 and {r["shots"] for r in rows} == {4, 16}
    s = study.protocol_summary(PLAN)
    assert s["problem"] is None and s["planned"] == s["done"] == 288 and s["missing"] == s["failed"] == 0
    assert [g["regime"] for g in s["regimes"]] == ["4-shot", "16-shot"]
    for g in s["regimes"]:
        assert g["complete"] and g["best_other"] == "best-single"  # best-single's mean is above peft-linear's
        base = _diff(g, "target-only")
        assert base["n"] == 12 and base["mean"] == pytest.approx(5.0, abs=1e-6)
        assert 4.0 <= base["ci_low"] <= 5.0 <= base["ci_high"] <= 6.0
        assert (base["wins"], base["ties"], base["losses"]) == (12, 0, 0)
        assert base["p_wilcoxon"] < 0.01
        assert "+5.0 points" in base["verdict"] and "ahead of target-only" in base["verdict"]
        best = _diff(g, "best-single")  # d = -1, -1, +2 points: mean 0, spans 0
        assert best["mean"] == pytest.approx(0.0, abs=1e-6) and best["ci_low"] < 0 < best["ci_high"]
        assert (best["wins"], best["ties"], best["losses"]) == (4, 0, 8)
        assert "not distinguishable from 0" in best["verdict"]
        # pi-tuning does not beat the best other transfer approach: the best mean is recommended
        rec = g["recommendation"]
        assert not rec["pi_tuning"] and not rec["provisional"]
        # table: mean ± std (ddof=1) over per-target means; check target-only by hand
        to = next(a for a in g["approaches"] if a["approach"] == "target-only")
        per_target = [100 * np.mean([_base(i, sd) for sd in SEEDS]) for i in range(12)]
        assert to["mean"] == pytest.approx(np.mean(per_target), abs=1e-3)
        assert to["std"] == pytest.approx(np.std(per_target, ddof=1), abs=1e-3) and to["n_targets"] == 12


def test_recommendation_is_pi_tuning_only_when_both_cis_are_above_zero(tmp_path):
    # drop best-single: then the best other transfer approach is peft-linear (+2 points): pi ahead by 3
    p = write_results(tmp_path / "protocol" / PLAN / "results.csv", peft_offset=0.02)
    _drop(p, "best-single")
    s = Study(tmp_path).protocol_summary(PLAN)
    for g in s["regimes"]:
        assert g["best_other"] == "peft-linear"
        d = _diff(g, "peft-linear")
        assert d["mean"] == pytest.approx(3.0, abs=1e-6) and d["ci_low"] > 0
        rec = g["recommendation"]
        assert rec["approach"] == "pi-tuning" and rec["pi_tuning"], rec
        assert "recommend π-Tuning" in rec["text"]


#: 19 per-target differences where one or two targets carry the mean: BCa's interval excludes 0, the plain
#: percentile interval does not (the shape of few-shot-v2's 16-shot pi-tuning - peft-linear difference)
SKEWED = [-0.1, 0.4, 0.7, 0.2, -0.5, -0.9, 1.1, -0.1, -0.4, 0.1, -0.1, 0.5, 0.0, 0.0, -0.4, 0.3, -0.6, 8.0, 12.0]


def test_a_verdict_that_rests_on_the_ci_method_is_called_fragile():
    from pitune_core.study.read.evidence import recommend, verdict
    from pitune_core.study.read.stats import paired, report_section

    p = paired(SKEWED, [0.0] * len(SKEWED))
    assert p.ci_low > 0 and p.pct_low < 0 < p.pct_high and p.fragile  # BCa (the rule) excludes 0 ...
    assert not paired([1.0, 2, 3, 4, 5], [0.0] * 5).fragile           # ... a clear case is not fragile
    d = {**p.as_dict(), "regime": "16-shot", "a": "pi-tuning", "b": "peft-linear"}
    text = verdict(d)
    assert "ahead of" in text and "fragile: the plain percentile bootstrap gives [" in text and "covers 0" in text
    base = {**paired([5.0] * 19, [0.0] * 19).as_dict(), "regime": "16-shot", "a": "pi-tuning", "b": "target-only"}
    regime = {"regime": "16-shot", "diffs": [base, d], "approaches": [], "complete": True, "best_other": "peft-linear",
              "missing": 0, "failed": 0, "planned": 38}
    rec = recommend(regime, {})
    assert rec["pi_tuning"] and "Fragile: against peft" in rec["text"]  # the rule still decides, and says so
    rows = [{"target": f"t{i}", "approach": a, "shots": 16, "seed": 0, "score": (50 + x) / 100 if a == "pi-tuning" else 0.5}
            for i, x in enumerate(SKEWED) for a in ("pi-tuning", "target-only")]
    md = report_section(rows)
    line = next(x for x in md.splitlines() if x.startswith("| 16 | target-only"))
    assert line.count("[") == 2 and "fragile" in line


def test_losing_case_recommends_the_other_approach(tmp_path):
    write_results(tmp_path / "protocol" / PLAN / "results.csv", peft_offset=0.08)  # peft-linear = +8
    s = Study(tmp_path).protocol_summary(PLAN)
    for g in s["regimes"]:
        assert g["best_other"] == "peft-linear"
        d = _diff(g, "peft-linear")
        assert d["mean"] == pytest.approx(-3.0, abs=1e-6) and d["ci_high"] < 0
        assert (d["wins"], d["losses"]) == (0, 12)
        assert "π-Tuning is behind peft-linear" in d["verdict"]
        rec = g["recommendation"]
        assert rec["approach"] == "peft-linear" and not rec["pi_tuning"]
        assert "recommend peft-linear" in rec["text"] and "not shown" in rec["text"]


def test_partial_results_use_only_complete_targets(tmp_path):
    not_done = {("task_11", "pi-tuning", 16, 2): "missing", ("task_03", "target-only", 16, 0): "failed"}
    not_done.update({(t, a, 16, 2): "missing" for t in TARGETS[:2] for a in ("best-single", "peft-linear")})
    write_results(tmp_path / "protocol" / PLAN / "results.csv", not_done=not_done)
    s = Study(tmp_path).protocol_summary(PLAN)
    assert s["planned"] == 288 and s["done"] == 288 - 6 and s["missing"] == 5 and s["failed"] == 1
    four, sixteen = _regime(s, "4-shot"), _regime(s, "16-shot")
    assert four["complete"] and not sixteen["complete"]
    assert (sixteen["done"], sixteen["planned"], sixteen["failed"], sixteen["missing"]) == (138, 144, 1, 5)
    d = _diff(sixteen, "target-only")  # task_11 (π-Tuning seed 2) and task_03 (target-only seed 0) left out
    assert d["n"] == 10 and d["targets"] == 12
    kept = [i for i in range(12) if i not in (3, 11)]
    assert d["mean"] == pytest.approx(np.mean([5 + (i % 3 - 1) for i in kept]), abs=1e-6)
    table = {a["approach"]: a for a in sixteen["approaches"]}
    assert table["pi-tuning"]["n_targets"] == 11 and table["pi-tuning"]["planned_targets"] == 12
    assert table["peft-linear"]["n_targets"] == 10
    assert sixteen["recommendation"]["provisional"] and "Provisional" in sixteen["recommendation"]["text"]
    # a regime with no complete target at all: no difference, no recommendation, no crash
    write_results(tmp_path / "protocol" / PLAN / "results.csv",
                  not_done={(t, a, 16, 0): "missing" for t in TARGETS for a in ("pi-tuning", "target-only",
                                                                                 "best-single", "peft-linear")})
    g = _regime(Study(tmp_path).protocol_summary(PLAN), "16-shot")
    assert all(d["n"] == 0 for d in g["diffs"]) and g["recommendation"]["approach"] is None
    assert "no target has every planned seed" in _diff(g, "target-only")["verdict"]


def _bad(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


GOOD = ["k", "task_00", "pi-tuning", "4", "0", "done", "0.6"]
COLS = ["key", "target", "approach", "shots", "seed", "status", "score"]


@pytest.mark.parametrize("header,rows,needle", [
    (["key", "target", "approach", "shots", "seed", "status"], [GOOD[:6]], "lacks the column(s) score"),
    (COLS, [GOOD[:5] + ["finished", "0.6"]], "status 'finished'"),
    (COLS, [GOOD[:6] + [""]], "needs a score"),
    (COLS, [GOOD[:6] + ["nan"]], "needs a score"),
    (COLS, [GOOD[:6] + ["61.0"]], "between 0 and 1"),
    (COLS, [GOOD[:3] + ["0"] + GOOD[4:]], "shots '0'"),
    (COLS, [GOOD[:4] + ["-1"] + GOOD[5:]], "seed '-1'"),
    (COLS, [["k", "../etc", *GOOD[2:]]], "line 2"),
    (COLS, [["k", "task_00", "<b>x</b>", *GOOD[3:]]], "is not an approach name"),
    (COLS, [GOOD, GOOD], "a second row"),
    (COLS, [GOOD + ["extra"]], "more cells than columns"),
])
def test_malformed_results_give_a_problem_not_a_crash(tmp_path, header, rows, needle):
    p = tmp_path / "protocol" / PLAN / "results.csv"
    _bad(p, header, rows)
    study = Study(tmp_path)
    with pytest.raises(ValueError, match="protocol/few-shot-test/results.csv"):
        study.protocol_results(PLAN)
    s = study.protocol_summary(PLAN)
    assert s["problem"] and needle in s["problem"] and "\n" not in s["problem"], s


def test_oversized_and_undecodable_files_are_refused(tmp_path, monkeypatch):
    p = write_results(tmp_path / "protocol" / PLAN / "results.csv")
    monkeypatch.setattr(evidence, "MAX_RESULTS_BYTES", 1000)
    assert "more than the 1000" in Study(tmp_path).protocol_summary(PLAN)["problem"]
    monkeypatch.undo()
    p.write_bytes(b"key,target,approach,shots,seed,status,score\n\xff\xfe,x\n")
    assert "not a readable CSV" in Study(tmp_path).protocol_summary(PLAN)["problem"]


def test_plan_folders_are_validated(tmp_path):
    write_results(tmp_path / "protocol" / "Bad Name" / "results.csv")
    write_results(tmp_path / "protocol" / "v1" / "results.csv")
    (tmp_path / "protocol" / "no-results").mkdir()
    (tmp_path / "protocol" / "linked").symlink_to(tmp_path / "protocol" / "v1")
    study = Study(tmp_path)
    assert study.protocol_plans() == ["v1"]
    for name in ("Bad Name", "no-results", "linked", "../protocol/v1"):
        with pytest.raises(ValueError, match="no protocol results"):
            study.protocol_results(name)
        assert "no protocol results" in study.protocol_summary(name)["problem"]
    assert Study(tmp_path / "nothing").protocol_plans() == []


def test_results_are_reread_when_the_file_changes(tmp_path):
    p = write_results(tmp_path / "protocol" / PLAN / "results.csv",
                      not_done={(t, "pi-tuning", 4, 0): "missing" for t in TARGETS})
    study = Study(tmp_path)
    assert study.protocol_summary(PLAN)["done"] == 288 - 12
    write_results(p)
    os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))
    assert study.protocol_summary(PLAN)["done"] == 288


# ----------------------------------------------------------------------------- figure

def test_paired_diff_figure_is_a_sorted_dot_plot_on_a_zoomed_axis(tmp_path):
    write_results(tmp_path / "protocol" / PLAN / "results.csv", peft_offset=0.08)
    s = Study(tmp_path).protocol_summary(PLAN)
    diffs = [d for g in s["regimes"] for d in g["diffs"]]
    fig = paired_diff_figure(diffs)
    assert [t.type for t in fig.data] == ["scatter", "scatter"]  # one facet per regime, dots not bars
    for t in fig.data:
        assert list(t.x) == sorted(t.x)  # sorted by mean (largest on top)
        assert list(t.y) == ["π-Tuning − peft-linear", "π-Tuning − best-single", "π-Tuning − target-only"]
        assert list(t.x) == pytest.approx([-3.0, 0.0, 5.0], abs=1e-6)
        assert all(v > 0 for v in t.error_x.array) and all(v > 0 for v in t.error_x.arrayminus)
        assert "W/T/L" in t.hovertemplate and "over %{customdata[2]} targets" in t.hovertemplate
        assert [c[1] for c in t.customdata] == ["0/0/12", "4/0/8", "12/0/0"]
    lo, hi = fig.layout.xaxis.range
    assert -5 < lo < -3 and 5 < hi < 7  # zoomed to the CIs (with 0 in view), not 0..100
    assert sum(1 for sh in fig.layout.shapes if sh.x0 == 0 == sh.x1) == 2  # a zero line per facet
    # labels from a file cannot inject plotly pseudo-HTML
    bad = paired_diff_figure([{**diffs[0], "label": "<a href='x'>y</a>"}])
    assert "<a" not in bad.data[0].y[0]
    assert paired_diff_figure([]).layout.annotations  # nothing done yet: a note, not an error


# ----------------------------------------------------------------------------- the compare tab

def _study_copy(tmp_path: Path, **results) -> Path:
    if not (SHIPPED / "manifest.json").is_file():
        pytest.skip(f"no complete study at {SHIPPED}")
    root = copy_without_measurements(SHIPPED, tmp_path / "study")
    if results.pop("write", True):
        _list_in_manifest(root, write_results(root / "protocol" / PLAN / "results.csv", **results))
    return root


def _list_in_manifest(root: Path, path: Path) -> None:
    man = json.loads((root / "manifest.json").read_text())
    man["files"][path.relative_to(root).as_posix()] = sha256_file(path)
    (root / "manifest.json").write_text(json.dumps(man, indent=1))


def _compare_tab(root: Path, monkeypatch, tmp_path, timeout: int = 120) -> AppTest:
    monkeypatch.setenv("PITUNE_STUDY", str(root))
    monkeypatch.setenv("PITUNE_RUNS_DB", str(tmp_path / "runs" / "registry.sqlite"))
    at = AppTest.from_file(APP, default_timeout=timeout).run()
    at.session_state["view"] = "Runs & compare"
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_compare_tab_shows_the_pre_registered_comparison(tmp_path, monkeypatch):
    root = _study_copy(tmp_path, peft_offset=0.08,
                       not_done={(t, "peft-linear", 16, 2): "missing" for t in TARGETS[:3]})
    at = _compare_tab(root, monkeypatch, tmp_path)
    assert not at.error, [e.value for e in at.error]
    assert any(h.value == "Pre-registered comparison (few-shot-test)" for h in at.subheader)
    text = " ".join(m.value for m in at.markdown)
    assert "285 of 288 planned runs done" in text
    assert any("16-shot (141 of 144 runs done)" in w.value and "4-shot" not in w.value for w in at.warning)
    spec = json.loads(at.get_by_key("protocol_diffs").proto.spec)
    assert all(t["type"] == "scatter" and "error_x" in t for t in spec["data"])
    table = next(df.value for df in at.dataframe if "4-shot" in df.value.columns and "approach" in df.value.columns)
    assert list(table.columns) == ["approach", "4-shot", "16-shot"]
    row = table[table["approach"] == "π-Tuning"].iloc[0]
    assert row["4-shot"].endswith("(n=12)") and "±" in row["4-shot"]
    assert table[table["approach"] == "peft-linear"].iloc[0]["16-shot"].endswith("(n=9 of 12)")
    assert "π-Tuning is behind peft-linear" in text.replace("\\", "")
    assert any("recommend peft-linear" in i.value.replace("\\", "") for i in at.info)
    with pytest.raises(KeyError):  # the provisional bars are not drawn next to the protocol's evidence
        at.get_by_key("compare_chart")
    # no robustness.csv: said plainly, nothing drawn (test_robustness_view.py draws one)
    assert any(i.value.startswith("This study holds no robustness measurements") for i in at.info)
    with pytest.raises(KeyError):
        at.get_by_key("robustness_chart")


def test_compare_tab_recommends_pi_tuning_when_the_evidence_does(tmp_path, monkeypatch):
    root = _study_copy(tmp_path, write=False)
    p = write_results(root / "protocol" / PLAN / "results.csv", peft_offset=0.02)
    _drop(p, "best-single")
    _list_in_manifest(root, p)
    at = _compare_tab(root, monkeypatch, tmp_path)
    assert not at.error, [e.value for e in at.error]
    assert not any(w.value.startswith("Incomplete") for w in at.warning)  # complete: no incomplete regime
    assert sum("recommend π-Tuning" in s.value.replace("\\", "") for s in at.success) == 2


def test_compare_tab_reports_a_malformed_file(tmp_path, monkeypatch):
    root = _study_copy(tmp_path, write=False)
    p = root / "protocol" / PLAN / "results.csv"
    _bad(p, COLS, [GOOD[:5] + ["finished", "0.6"]])
    _list_in_manifest(root, p)
    at = _compare_tab(root, monkeypatch, tmp_path)
    assert len(at.error) == 1 and "cannot be read" in at.error[0].value and "finished" in at.error[0].value
    assert any(h.value.startswith("Runs and baselines for") for h in at.subheader)  # the rest still renders


def test_compare_tab_without_protocol_results_keeps_the_provisional_section(tmp_path, monkeypatch):
    root = _study_copy(tmp_path, write=False)
    at = _compare_tab(root, monkeypatch, tmp_path)
    assert not at.error
    assert not any(h.value.startswith("Pre-registered comparison") for h in at.subheader)
    assert any(h.value.startswith("Runs and baselines for") for h in at.subheader)
    assert any(c.value.startswith("This study holds no robustness measurements") for c in at.caption)


def test_a_partly_run_approach_cannot_become_the_best_other():
    """An extra that has run on two easy targets so far must not displace the competitor measured on
    every target (few-shot-v2 at 16 shots, part way through its extras)."""
    from pitune_core.study.read.stats import best_other, report_section

    targets = [f"t{i}" for i in range(6)]
    means = {"pi-tuning": {t: 70.0 for t in targets},
             "peft-linear": {t: 68.0 for t in targets},
             "uniform-avg-tuned": {"t0": 90.0, "t1": 90.0}}  # complete on 2 of 6 targets only
    assert best_other(means, ["peft-linear", "uniform-avg-tuned"]) == "uniform-avg-tuned"  # the old rule
    assert best_other(means, ["peft-linear", "uniform-avg-tuned"], over=means["pi-tuning"]) == "peft-linear"
    means["uniform-avg-tuned"].update({t: 60.0 for t in targets[2:]})  # now complete: ranked on all 6 targets
    assert best_other(means, ["peft-linear", "uniform-avg-tuned"], over=means["pi-tuning"]) == "uniform-avg-tuned"
    # nobody complete where pi-tuning is: each on its own targets (provisional)
    assert best_other({"pi-tuning": {"t0": 1.0}, "b": {"t1": 2.0}}, ["b"], over={"t0": 1.0}) == "b"
    rows = [{"target": t, "approach": a, "shots": 16, "seed": 0, "status": "done", "score": sc / 100}
            for a, per in (("pi-tuning", {t: 70 for t in targets}), ("target-only", {t: 65 for t in targets}),
                           ("peft-linear", {t: 68 for t in targets}), ("pi-tuning-no-own", {t: 69 for t in targets}))
            for t, sc in per.items()]
    rows += [{"target": t, "approach": "uniform-avg-tuned", "shots": 16, "seed": 0,
              "status": "done" if t in ("t0", "t1") else "missing", "score": 0.9 if t in ("t0", "t1") else None}
             for t in targets]
    md = report_section(rows, others=["peft-linear", "uniform-avg-tuned"], ablations=["pi-tuning-no-own", "pi-tuning-global"])
    assert "| 16 | best other: peft-linear | 6 |" in md
    assert "| 16 | ablation: pi-tuning-no-own | 6 | +1.0 |" in md and "pi-tuning-global" not in md
    assert "not yet candidates for the best other: 16 shots: uniform-avg-tuned." in md
