"""The robustness of a pre-registered comparison's tuned models (issue 28, item 3), from the runs' log
to what is shown: protocol.collect / write_results (robustness.csv), its validated reader, the
per-regime table (pitune_core.study.robustness.robustness_table), the REPORT.md section and the
compare tab.

The results are test_dashboard_protocol's synthetic ones (12 targets × 3 seeds × 4 approaches at 4
and 16 shots, known scores); the robustness rows written here drop each model's score by known
amounts, so every expected number below is computed by hand from those amounts:

- shifted (one shift source; task_11 has none): π-Tuning −10 points, target-only −20 − 0.3 i (target i),
  best-single −12 − 0.15 i, peft-linear −15 − 0.25 i;
- corrupted (two corruptions): π-Tuning −4 and −8 (mean −6), target-only −6 − 0.2 i and −14 − 0.2 i
  (mean −10 − 0.2 i), best-single −5 − 0.1 i and −8, peft-linear −4 − 0.35 i and −8;
- best-single's seed 2 of task_00 at 16 shots is not scored (so that target is left out there).

Every paired difference thus differs between targets (no tied ranks: scipy's Wilcoxon takes its
exact path, not a slow permutation test).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from test_dashboard_protocol import (PLAN, SEEDS, TARGETS, _compare_tab, _list_in_manifest, _scores, _study_copy,
                                     write_results)

from dashboard.figures import robustness_diff_figure, robustness_figure
from pitune_core.study import protocol
from pitune_core.study.read.evidence import read_protocol_csv
from pitune_core.study.read.reader import Study
from pitune_core.study.read.results import ROBUSTNESS_COLUMNS, ROBUSTNESS_FILE, read_robustness
from pitune_core.study.report import protocol_section

SHIFT = {"pi-tuning": lambda i: 0.10, "target-only": lambda i: 0.20 + 0.003 * i,
         "best-single": lambda i: 0.12 + 0.0015 * i, "peft-linear": lambda i: 0.15 + 0.0025 * i}
CORRUPT = {"pi-tuning": lambda i: (0.04, 0.08), "target-only": lambda i: (0.06 + 0.002 * i, 0.14 + 0.002 * i),
           "best-single": lambda i: (0.05 + 0.001 * i, 0.08), "peft-linear": lambda i: (0.04 + 0.0035 * i, 0.08)}
NO_SHIFT = "task_11"
UNSCORED = ("task_00", "best-single", 16, 2)


def _id(i: int, a: str, seed: int) -> float:
    """A run's in-distribution score as results.csv holds it (4 decimals)."""
    return round(_scores(i, seed, 0.02)[a], 4)


def _model_rows(i: int, a: str, seed: int) -> list[dict]:
    """One model's robustness rows (:data:`pitune_core.tune.robustness.ROW_FIELDS`)."""
    t, v = TARGETS[i], _id(i, a, seed)
    base = {"target": t, "source": None, "corruption": None, "severity": None, "metric": "accuracy", "n": 40,
            "dropped": 0, "note": None}
    rows = [{**base, "set": "in-distribution", "value": v, "accuracy": v}]
    if t == NO_SHIFT:
        rows.append({**base, "set": "shifted", "value": None, "accuracy": None, "n": 0,
                     "note": f"{t} is in no shift group: no shifted test set"})
    else:
        rows.append({**base, "set": "shifted", "source": "other_site", "value": v - SHIFT[a](i),
                     "accuracy": v - SHIFT[a](i), "dropped": 3})
    for c, drop in zip(("gaussian_noise", "blur"), CORRUPT[a](i)):
        rows.append({**base, "set": "corrupted", "corruption": c, "severity": 3, "value": v - drop,
                     "accuracy": v - drop})
    return rows


def write_robustness_csv(folder: Path, skip=(UNSCORED,)) -> Path:
    """robustness.csv beside test_dashboard_protocol's results.csv (its keys: k{i}{approach}{shots}{seed})."""
    path = folder / ROBUSTNESS_FILE
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(ROBUSTNESS_COLUMNS))
        w.writeheader()
        for s in (4, 16):
            for seed in SEEDS:
                for i, t in enumerate(TARGETS):
                    for a in SHIFT:
                        if (t, a, s, seed) in skip:
                            continue
                        for r in _model_rows(i, a, seed):
                            w.writerow({**r, "key": f"k{i}{a}{s}{seed}", "approach": a, "shots": s, "seed": seed})
    return path


def _plan_folder(root: Path) -> Path:
    write_results(root / "protocol" / PLAN / "results.csv")
    return root / "protocol" / PLAN


def _approach(regime: dict, a: str) -> dict:
    return next(x for x in regime["approaches"] if x["approach"] == a)


def _diff(regime: dict, b: str, measure: str) -> dict:
    return next(d for d in regime["diffs"] if d["b"] == b and d["measure"] == measure)


# ----------------------------------------------------------------------------- the table

def test_the_table_matches_a_hand_computation(tmp_path):
    write_robustness_csv(_plan_folder(tmp_path))
    rob = Study(tmp_path).protocol_robustness(PLAN)
    assert rob["problem"] is None and rob["runs_scored"] == 2 * 3 * 12 * 4 - 1
    assert [g["regime"] for g in rob["regimes"]] == ["4-shot", "16-shot"]
    shifted = [i for i in range(12) if TARGETS[i] != NO_SHIFT]
    for g in rob["regimes"]:
        assert g["runs_done"] == 144 and g["runs_scored"] == 144 - (g["shots"] == 16)
        assert [a["approach"] for a in g["approaches"]] == ["pi-tuning", "target-only", "best-single", "peft-linear"]
        pi, to = _approach(g, "pi-tuning"), _approach(g, "target-only")
        ind = [100 * np.mean([_id(i, "pi-tuning", sd) for sd in SEEDS]) for i in range(12)]
        assert pi["in_distribution"]["mean"] == pytest.approx(np.mean(ind), abs=1e-9)
        assert pi["in_distribution"]["std"] == pytest.approx(np.std(ind, ddof=1), abs=1e-9)
        assert pi["in_distribution"]["n"] == 12 and pi["shifted"]["n"] == 11  # task_11 has no shifted set
        assert pi["shifted"]["mean"] == pytest.approx(np.mean([ind[i] - 10 for i in shifted]), abs=1e-9)
        assert pi["corrupted"]["mean"] == pytest.approx(np.mean(ind) - 6, abs=1e-9)
        assert pi["shifted_gap"]["mean"] == pytest.approx(-10, abs=1e-9)
        assert pi["shifted_gap"]["std"] == pytest.approx(0, abs=1e-9)
        to_gaps = [-20 - 0.3 * i for i in shifted]
        assert to["shifted_gap"]["mean"] == pytest.approx(-21.5, abs=1e-9)  # i = 0..10: mean i 5
        assert to["shifted_gap"]["std"] == pytest.approx(np.std(to_gaps, ddof=1), abs=1e-9)
        assert to["corrupted_gap"]["mean"] == pytest.approx(-10 - 0.2 * 5.5, abs=1e-9)  # i = 0..11: mean i 5.5
        d = _diff(g, "target-only", "shifted_gap")  # pi - target-only: 10 + 0.3 i > 0 on every target
        assert d["n"] == 11 and d["mean"] == pytest.approx(11.5, abs=1e-9)
        assert 10 <= d["ci_low"] < d["mean"] < d["ci_high"] <= 13 and (d["wins"], d["ties"], d["losses"]) == (11, 0, 0)
        assert d["p_wilcoxon"] == pytest.approx(2 / 2 ** 11) and d["label"] == "π-Tuning − target-only"  # exact test
        c = _diff(g, "target-only", "corrupted_gap")  # 4 + 0.2 i
        assert c["n"] == 12 and c["mean"] == pytest.approx(5.1, abs=1e-9) and 4 < c["ci_low"] < 5.1 < c["ci_high"] < 6.2
        s = _diff(g, "target-only", "shifted")  # the shifted scores: 5 + (i mod 3 - 1) (in-distribution) + 10 + 0.3 i
        assert s["mean"] == pytest.approx(np.mean([5 + (i % 3 - 1) + 10 + 0.3 * i for i in shifted]), abs=1e-6)
        p = _diff(g, "peft-linear", "shifted_gap")  # 5 + 0.25 i
        assert p["mean"] == pytest.approx(6.25, abs=1e-9) and p["wins"] == 11
        assert {d["measure"] for d in g["diffs"]} == {"shifted", "corrupted", "shifted_gap", "corrupted_gap"}
        assert {d["b"] for d in g["diffs"]} == {"target-only", "best-single", "peft-linear"}
    bs = _approach(rob["regimes"][1], "best-single")  # task_00 lacks a scored seed at 16 shots: left out
    assert (bs["n_targets"], bs["planned_targets"], bs["in_distribution"]["n"]) == (11, 12, 11)
    assert _diff(rob["regimes"][1], "best-single", "corrupted_gap")["n"] == 11
    assert _approach(rob["regimes"][0], "best-single")["n_targets"] == 12


def test_a_comparison_without_robustness_reads_as_before(tmp_path):
    folder = _plan_folder(tmp_path)
    study = Study(tmp_path)
    assert study.protocol_robustness(PLAN) == {"plan": PLAN, "problem": None, "runs_scored": 0, "regimes": []}
    (folder / ROBUSTNESS_FILE).write_text(",".join(ROBUSTNESS_COLUMNS) + "\n")  # a header only: none either
    assert study.protocol_robustness(PLAN)["runs_scored"] == 0
    assert len(study.protocol_results(PLAN)) == 288  # the comparison itself is read as before


def _rewrite(path: Path, change) -> None:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    change(rows)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _set(i: int, **kw):
    return lambda rows: rows[i].update(kw)


@pytest.mark.parametrize("change,needle", [
    (_set(0, set="ood"), "set 'ood' is not one of"),
    (_set(0, key="other"), "its key differs"),
    (_set(0, target="task_99"), "no done run"),
    (_set(0, value="1.5"), "value must be a number between 0 and 1"),
    (_set(0, value=""), "value must be a number"),
    (_set(2, corruption="fog"), "corruption 'fog'"),
    (_set(2, severity="9"), "severity 9"),
    (_set(2, corruption="", severity=""), "on the corrupted rows only"),
    (_set(1, source="../etc"), "line 3"),
    (_set(0, n="-1"), "n '-1'"),
    (_set(1, set="in-distribution"), "2 in-distribution rows"),
    (lambda rows: rows.pop(0), "0 in-distribution rows"),
])
def test_a_malformed_robustness_file_gives_a_problem_not_a_crash(tmp_path, change, needle):
    path = write_robustness_csv(_plan_folder(tmp_path))
    _rewrite(path, change)
    rob = Study(tmp_path).protocol_robustness(PLAN)
    assert rob["problem"] and needle in rob["problem"] and "\n" not in rob["problem"], rob
    assert f"protocol/{PLAN}/robustness.csv" in rob["problem"] and rob["regimes"] == []


def test_a_note_is_one_printable_line_and_oversized_files_are_refused(tmp_path, monkeypatch):
    from pitune_core.study.read import results

    path = write_robustness_csv(_plan_folder(tmp_path))
    _rewrite(path, lambda rows: next(r for r in rows if r["target"] == NO_SHIFT and r["set"] == "shifted").update(
        note="no <b>shift</b>\n\x1b[31m group"))
    runs = read_protocol_csv(path.parent / "results.csv")
    row = next(r for r in read_robustness(path, runs) if r["target"] == NO_SHIFT and r["set"] == "shifted")
    assert row["value"] is None and row["note"] == "no <b>shift</b> [31m group"
    monkeypatch.setattr(results, "MAX_ROBUSTNESS_BYTES", 1000)
    with pytest.raises(ValueError, match="more than the 1000"):
        read_robustness(path, runs)


# ----------------------------------------------------------------------------- the writer

def _records(plan, context, robust: set) -> list[dict]:
    """runs.jsonl records of every planned job (score 0.5 + 0.1 * seed); robustness rows for the
    approaches in ``robust``, whose in-distribution score is the run's score and corrupted score 0.1 lower."""
    out = []
    for job in plan.jobs():
        v = 0.5 + 0.1 * job["seed"]
        res = {"score": v, "accuracy": v, "metric": "accuracy", "steps": {"select": 0, "tune": 4, "total": 4},
               "sources": []}
        if job["approach"] in robust:
            res["robustness"] = [
                {"target": job["target"], "set": "in-distribution", "source": None, "corruption": None,
                 "severity": None, "metric": "accuracy", "value": v, "accuracy": v, "n": 20, "dropped": 0, "note": None},
                {"target": job["target"], "set": "corrupted", "source": None, "corruption": "typos", "severity": 3,
                 "metric": "accuracy", "value": v - 0.1, "accuracy": v - 0.1, "n": 20, "dropped": 0, "note": None}]
        out.append({"key": protocol.job_key(plan, job, context), "status": "done", "job": job, "context": context,
                    "result": res, "time_s": 1.0, "cpu_s": 1.0})
    return out


def test_write_results_carries_each_runs_robustness_rows(tmp_path):
    from pitune_core.tune.robustness import ROW_FIELDS  # lazy: loads torch

    assert set(ROW_FIELDS) <= set(ROBUSTNESS_COLUMNS)  # the file keeps every field of a robustness row
    plan = protocol.ProtocolPlan(name="t", rule={"text": "test"}, targets=["rt_polarity", "movie_sentiment"],
                                 shots=[4], seeds=[0, 1, 2], core=["pi-tuning", "target-only"], extra=[], extra_shots=[4])
    context = {"backbone_id": "x"}
    out = tmp_path / "out"
    out.mkdir()
    (out / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _records(plan, context, set())))
    protocol.write_results(plan, out, context)
    assert not (out / ROBUSTNESS_FILE).exists()  # no run scored: no file, results.csv as before
    with open(out / "results.csv", newline="") as f:
        assert next(csv.reader(f)) == list(protocol.RESULT_COLUMNS)
    (out / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _records(plan, context, {"pi-tuning"})))
    rows = protocol.collect(plan, out, context)
    assert sum("robustness" in r for r in rows) == 6 and all(len(r["robustness"]) == 2 for r in rows
                                                             if r["approach"] == "pi-tuning")
    protocol.write_results(plan, out, context)
    runs = read_protocol_csv(out / "results.csv")
    back = read_robustness(out / ROBUSTNESS_FILE, runs)
    assert len(back) == 12 and {r["approach"] for r in back} == {"pi-tuning"}
    keys = {(r["target"], r["seed"]): r["key"] for r in runs if r["approach"] == "pi-tuning"}
    assert all(r["key"] == keys[(r["target"], r["seed"])] for r in back)
    assert sorted(r["value"] for r in back if r["set"] == "corrupted") == pytest.approx(
        sorted(0.4 + 0.1 * s for s in (0, 1, 2) for _ in range(2)))


# ----------------------------------------------------------------------------- the report

def test_the_report_shows_robustness_only_where_the_comparison_has_it(tmp_path):
    folder = _plan_folder(tmp_path)
    (folder / "report.md").write_text("### Pre-registered comparison: few-shot-test\n\nsome numbers\n")
    before = protocol_section(tmp_path)
    assert not any("Robustness" in ln for ln in before)
    (folder / ROBUSTNESS_FILE).write_text(",".join(ROBUSTNESS_COLUMNS) + "\n")
    assert protocol_section(tmp_path) == before  # a header only: still nothing
    write_robustness_csv(folder)
    lines = protocol_section(tmp_path)
    assert lines[:len(before) - 1] == before[:-1]  # the comparison's own report, then the robustness section
    at = lines.index(f"#### Robustness of the tuned models: {PLAN}")
    assert at > lines.index("#### Pre-registered comparison: few-shot-test")
    assert "287 of the 288 done runs" in lines[at + 2]
    ind = [100 * np.mean([_id(i, "pi-tuning", sd) for sd in SEEDS]) for i in range(12)]
    sh = [ind[i] - 10 for i in range(11)]
    row = next(ln for ln in lines if ln.startswith("| 4-shot | pi-tuning |"))
    assert row == (f"| 4-shot | pi-tuning | {np.mean(ind):.1f} ± {np.std(ind, ddof=1):.1f} (12) | "
                   f"{np.mean(sh):.1f} ± {np.std(sh, ddof=1):.1f} (11) | {np.mean(ind) - 6:.1f} ± "
                   f"{np.std(ind, ddof=1):.1f} (12) | -10.0 ± 0.0 (11) | -6.0 ± 0.0 (12) |")
    line = next(ln for ln in lines if ln.startswith("| 16-shot | target-only | shifted − in-distribution |"))
    assert line.startswith("| 16-shot | target-only | shifted − in-distribution | 11 | +11.5 | [+1") and "| 11/0/0 |" in line
    assert f"| {2 / 2 ** 11:.3f} |" in line
    assert any(ln.startswith("| 16-shot | target-only | corrupted − in-distribution | 12 | +5.1 | [+") for ln in lines)
    _rewrite(folder / ROBUSTNESS_FILE, _set(0, set="ood"))
    bad = protocol_section(tmp_path)
    assert any("robustness.csv` cannot be read" in ln and "set 'ood'" in ln for ln in bad)


# ----------------------------------------------------------------------------- the figures

def test_the_figures_show_each_approachs_scores_and_the_paired_gaps(tmp_path):
    write_robustness_csv(_plan_folder(tmp_path))
    regimes = Study(tmp_path).protocol_robustness(PLAN)["regimes"]
    fig = robustness_figure(regimes)
    assert len(fig.data) == 2 * 3 and [t.name for t in fig.data[:3]] == ["in-distribution", "shifted", "corrupted"]
    ind, shifted = fig.data[0], fig.data[1]
    assert list(ind.x) == ["π-Tuning", "target-only", "best-single", "peft-linear"]
    pi = _approach(regimes[0], "pi-tuning")
    assert ind.y[0] == pytest.approx(pi["in_distribution"]["mean"]) and shifted.y[0] == pytest.approx(pi["shifted"]["mean"])
    assert ind.error_y.array[0] == pytest.approx(pi["in_distribution"]["std"])
    bad = robustness_figure([{**regimes[0], "approaches": [{**pi, "label": "<a href='x'>y</a>"}]}])
    assert "<a" not in bad.data[0].x[0]
    diffs = robustness_diff_figure(regimes)  # the gaps only: a facet per regime and gap, 3 comparisons each
    assert len(diffs.data) == 4 and all(len(t.y) == 3 for t in diffs.data)
    assert diffs.data[0].name == "4-shot · shifted − in-distribution"
    assert robustness_figure([]).layout.annotations


# ----------------------------------------------------------------------------- the compare tab

def test_compare_tab_shows_the_robustness_table_and_figure(tmp_path, monkeypatch):
    root = _study_copy(tmp_path)
    _list_in_manifest(root, write_robustness_csv(root / "protocol" / PLAN))
    at = _compare_tab(root, monkeypatch, tmp_path, timeout=600)  # the comparison's and robustness' bootstraps
    assert not at.error, [e.value for e in at.error]
    assert not any("holds no robustness" in i.value for i in at.info)
    spec = json.loads(at.get_by_key("robustness_chart").proto.spec)
    assert [t["name"] for t in spec["data"][:3]] == ["in-distribution", "shifted", "corrupted"]
    table = next(df.value for df in at.dataframe if "targets scored" in df.value.columns)
    pi = table[(table["approach"] == "π-Tuning") & (table["regime"] == "4-shot")].iloc[0]
    assert pi["shifted − in-distribution"] == "-10.0 ± 0.0 (n=11)" and pi["corrupted − in-distribution"] == "-6.0 ± 0.0 (n=12)"
    bs = table[(table["approach"] == "best-single") & (table["regime"] == "16-shot")].iloc[0]
    assert bs["targets scored"] == "11 of 12"
    diffs = next(df.value for df in at.dataframe if "measure" in df.value.columns)
    d = diffs[(diffs["comparison"] == "π-Tuning − target-only") & (diffs["measure"] == "corrupted − in-distribution")]
    assert list(d["mean"]) == pytest.approx([5.1, 5.1])
    # without robustness.csv the tab says so plainly: test_dashboard_protocol's compare-tab tests
