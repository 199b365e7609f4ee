"""Runs & compare and the Study tab read the study's real measurements (issue 32, points 2, 3, 8).

A small synthetic study (tests/test_study.py) gets a pre-registered comparison with known numbers
(``protocol/<plan>/results.csv`` + ``runs.jsonl``) and a ground truth's ``pairs.jsonl``, listed in
its manifest as ``pitune precompute`` would; a user's runs are put in a temporary registry. Every
expected value below is written by hand from those numbers.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_study import make_synthetic_study  # noqa: E402

from pitune_core.common import sha256_file  # noqa: E402
from pitune_core.study.protocol import RESULT_COLUMNS  # noqa: E402
from pitune_core.study.read.reader import Study  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
APP = str(REPO / "dashboard" / "app.py")
PLAN = "few-shot-test"
TARGET = "movie_sentiment"  # zero-shot 0.3 in the synthetic expert summary
#: (approach, shots) -> scores of seeds 0, 1, 2
SCORES = {("pi-tuning", 4): (0.70, 0.71, 0.72), ("target-only", 4): (0.60, 0.62, 0.64),
          ("pi-tuning", 16): (0.80, 0.81, 0.82), ("target-only", 16): (0.75, 0.75, 0.78)}


def _list(root: Path, *paths: Path) -> None:
    man = json.loads((root / "manifest.json").read_text())
    for p in paths:
        man["files"][p.relative_to(root).as_posix()] = sha256_file(p)
    (root / "manifest.json").write_text(json.dumps(man, indent=1))


def _study(tmp_path: Path) -> Path:
    root = make_synthetic_study(tmp_path / "study")
    proto = root / "protocol" / PLAN
    proto.mkdir(parents=True)
    with open(proto / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=RESULT_COLUMNS)
        w.writeheader()
        for (a, shots), scores in SCORES.items():
            for seed, s in enumerate(scores):
                w.writerow({"key": f"k-{a}-{shots}-{seed}", "target": TARGET, "approach": a, "shots": shots,
                            "seed": seed, "status": "done", "score": s, "accuracy": s, "metric": "accuracy",
                            "time_s": 10.0})
    recs = [{"key": f"k{i}", "status": "done", "job": {"target": TARGET}, "time_s": 10.0} for i in range(4)]
    recs.insert(0, {"key": "k0", "status": "failed", "job": {"target": TARGET}, "time_s": 3.0})  # retried: done
    recs.append({"key": "k9", "status": "failed", "job": {"target": TARGET}, "time_s": 2.0})
    (proto / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs) + "not json\n")
    gt = root / "groundtruth" / "gt-test"
    gt.mkdir(parents=True)
    pairs = [{"target": TARGET, "source": s, "seed": seed, "score": 0.5 + 0.01 * seed, "key": "abc"}
             for s in ("scratch", "tweet_sentiment", "bbc_topic") for seed in (0, 1)]
    (gt / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    _list(root, proto / "results.csv", proto / "runs.jsonl", gt / "pairs.jsonl")
    return root


def _run(db: Path, study: Path, target: str, shots, test: dict) -> str:
    from pitune_core.runs.registry import RunRegistry

    reg = RunRegistry(db)
    cfg = {"target": target, "k": 2, "method": "lora", "embedding": "fisher", "shots": shots, "weights": "uniform",
           "sources": ["mnist", "lfw_faces"], "seed": 0, "study": str(study), "weights_only": False}
    run_id = reg.submit("transfer", cfg, name="test run")
    reg.claim(run_id)
    reg.finish(run_id, "succeeded", {"accuracy": test["accuracy"], "test": test, "steps": 10})
    return run_id


def _app(study: Path, db: Path, monkeypatch, view: str) -> AppTest:
    monkeypatch.setenv("PITUNE_STUDY", str(study))
    monkeypatch.setenv("PITUNE_RUNS_DB", str(db))
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.session_state["view"] = view
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


# ----------------------------------------------------------------------------- reader + evidence

def test_target_evidence_reads_the_protocol(tmp_path):
    study = Study(_study(tmp_path))
    ev = study.target_evidence(TARGET)
    assert ev["source"] == f"protocol/{PLAN}/results.csv" and not ev["provisional"]
    assert list(ev["regimes"]) == ["4-shot", "16-shot"]
    four = {a["approach"]: a for a in ev["regimes"]["4-shot"]}
    assert four["target-only"]["mean"] == pytest.approx(0.62) and four["target-only"]["std"] == pytest.approx(0.02)
    assert [a["approach"] for a in ev["regimes"]["4-shot"]] == ["pi-tuning", "target-only"]  # best first
    assert ev["zero_shot"] == pytest.approx(0.3) and ev["zero_shot_source"] == "experts/summary.csv"
    assert study.compare_targets()[0] == TARGET  # the protocol's targets first
    # a target the protocol did not run: the old compare/results.csv, marked provisional
    legacy = study.target_evidence("sklearn_digits")
    assert legacy["provisional"] and legacy["source"] == "compare/results.csv"


def test_run_flags_name_what_a_run_falls_below():
    from pitune_core.study.read.evidence import run_flags, target_measurements

    measured = target_measurements([{"target": "t", "approach": "target-only", "shots": 4, "seed": s, "status": "done",
                                     "score": v} for s, v in enumerate((0.6, 0.62, 0.64))], "t")
    assert run_flags(0.65, "4-shot", measured, 0.5) == []
    below_base = run_flags(0.61, "4-shot", measured, 0.5)
    assert len(below_base) == 1 and "target-only at 4-shot" in below_base[0] and "61.0 vs 62.0" in below_base[0]
    both = run_flags(0.45, "4-shot", measured, 0.5)
    assert len(both) == 2 and both[0].startswith("below zero-shot") and "45.0 vs 50.0" in both[0]
    assert run_flags(0.45, "1-shot", measured, 0.5) == [both[0]]  # no target-only measured at 1 shot
    assert run_flags(None, "4-shot", measured, 0.5) == []


def test_measurement_logs_count_the_studys_runs(tmp_path):
    logs = {r["stage"]: r for r in Study(_study(tmp_path)).measurement_logs()}
    gt, proto = logs["ground truth (transfer pairs)"], logs["protocol (pre-registered runs)"]
    assert gt["runs"] == 6 and gt["seconds"] is None and gt["path"] == "groundtruth/gt-test/pairs.jsonl"
    assert proto["runs"] == 4 and proto["failed"] == 1 and proto["seconds"] == pytest.approx(40.0)


# ----------------------------------------------------------------------------- the pages

def test_compare_tab_draws_a_run_beside_the_study_and_flags_it(tmp_path, monkeypatch):
    root, db = _study(tmp_path), tmp_path / "runs" / "registry.sqlite"
    low = _run(db, root, TARGET, 4, {"accuracy": 0.58, "macro_f1": 0.5})  # below target-only's 62.0
    at = _app(root, db, monkeypatch, "Runs & compare")
    assert not at.error, [e.value for e in at.error]
    assert not any("No precomputed baselines" in i.value for i in at.info)
    assert at.radio(key="cmp_regime").value == "4-shot"  # the run's regime
    fig = json.loads(at.get_by_key("compare_chart").proto.spec)
    means = next(t for t in fig["data"] if t.get("name", "").startswith("study: mean"))
    assert means["x"] == ["π-Tuning", "target-only"] and means["y"] == pytest.approx([0.71, 0.62])
    mine = next(t for t in fig["data"] if t.get("name", "").startswith("your runs"))
    assert mine["y"] == [0.58] and mine["marker"]["color"] == ["#d62728"]
    lines = sorted(s["y0"] for s in fig["layout"]["shapes"])
    assert lines == pytest.approx([0.3, 0.62])  # zero-shot and target-only at 4 shots
    warn = [w.value for w in at.warning if low in w.value]
    assert warn and "below target-only at 4-shot" in warn[0] and "58.0 vs 62.0" in warn[0]
    table = next(df.value for df in at.dataframe if "vs the study" in df.value.columns)
    assert "below target-only" in table["vs the study"].iloc[0]
    study_table = next(df.value for df in at.dataframe if list(df.value.columns) == ["approach", "4-shot", "16-shot"]
                       and all("seed" in str(v) for v in df.value["4-shot"]))
    row = study_table[study_table["approach"] == "target-only"].iloc[0]
    assert row["4-shot"] == "62.0 ± 2.0 (3 seeds)"


def test_a_run_below_zero_shot_is_flagged_in_any_regime(tmp_path, monkeypatch):
    root, db = _study(tmp_path), tmp_path / "runs" / "registry.sqlite"
    run = _run(db, root, TARGET, 1, {"accuracy": 0.25, "macro_f1": 0.2})
    at = _app(root, db, monkeypatch, "Runs & compare")
    assert at.radio(key="cmp_regime").value == "1-shot"
    fig = json.loads(at.get_by_key("compare_chart").proto.spec)
    assert [s["y0"] for s in fig["layout"]["shapes"]] == pytest.approx([0.3])  # no target-only at 1 shot
    assert any(run in w.value and "below zero-shot" in w.value and "25.0 vs 30.0" in w.value for w in at.warning)
    assert any("not at 1-shot" in c.value for c in at.caption)


def test_open_a_run_follows_the_target(tmp_path, monkeypatch):
    root, db = _study(tmp_path), tmp_path / "runs" / "registry.sqlite"
    mine = _run(db, root, TARGET, 4, {"accuracy": 0.7, "macro_f1": 0.7})
    other = _run(db, root, "tweet_sentiment", 4, {"accuracy": 0.7, "macro_f1": 0.7})  # newer, another target
    at = _app(root, db, monkeypatch, "Runs & compare")
    at.sidebar.selectbox(key="target").set_value(TARGET).run()
    assert at.selectbox(key="open_run").value == mine and len(at.selectbox(key="open_run").options) == 1
    at.sidebar.selectbox(key="target").set_value("tweet_sentiment").run()
    assert at.selectbox(key="open_run").value == other
    at.sidebar.selectbox(key="target").set_value("bbc_topic").run()  # no runs: none of another target is opened
    with pytest.raises(KeyError):
        at.selectbox(key="open_run")
    assert any("No runs of `bbc_topic`" in c.value for c in at.caption)


def test_study_tab_counts_the_measurements(tmp_path, monkeypatch):
    root, db = _study(tmp_path), tmp_path / "runs" / "registry.sqlite"
    at = _app(root, db, monkeypatch, "Study")
    assert not at.error
    times = next(df.value for df in at.dataframe if "recorded time" in df.value.columns)
    rows = {s: (t, n) for s, t, n in zip(times["stage"], times["recorded time"], times["runs"])}
    assert rows["ground truth (transfer pairs)"] == ("not recorded", 6)
    assert rows["protocol (pre-registered runs)"] == ("0.7 min", 4)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Ground-truth pairs"] == "6" and metrics["Protocol runs"] == "4"


def test_a_running_stage_shows_its_count_and_time_left(tmp_path, monkeypatch):
    """Issue 32, points 1 and 7: the live run shows its stage with the stage's own count and an ETA
    (before: "stage: own expert ...", an empty bar and "loss –" for the whole first-use work)."""
    from pitune_core.runs.jobs import RunContext
    from pitune_core.runs.registry import RunRegistry
    from pitune_core.predict.predictors import SOURCE_STAGE

    root, db = _study(tmp_path), tmp_path / "runs" / "registry.sqlite"
    reg = RunRegistry(db)
    cfg = {"target": TARGET, "k": 2, "method": "lora", "embedding": "fisher", "shots": 4, "weights": "uniform",
           "sources": None, "seed": 0, "study": str(root), "weights_only": False}
    run_id = reg.submit("transfer", cfg, name="live")
    rec = reg.claim(run_id)
    ctx = RunContext(reg, rec)
    clock = iter([100.0, 100.0, 130.0])  # the stage starts at 100 s; 3 of 12 rows done at 130 s
    monkeypatch.setattr("pitune_core.runs.jobs.time.time", lambda: next(clock, 130.0))
    ctx.progress(f"{SOURCE_STAGE} (fisher-empirical)", step=0, total=12)
    ctx.progress(f"{SOURCE_STAGE} (fisher-empirical)", step=3, total=12)
    ctx.flush()
    monkeypatch.undo()
    monkeypatch.setenv("PITUNE_STUDY", str(root))
    monkeypatch.setenv("PITUNE_RUNS_DB", str(db))
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.session_state["view"] = "Tune & launch"
    at.run()
    bars = [b.proto.text for b in at.get("progress")]
    assert any("3/12" in t and "about 1:30 left" in t and "source-side rows not shipped" in t for t in bars), bars
