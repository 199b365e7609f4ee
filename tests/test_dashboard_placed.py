"""A placed user task in the dashboard (issue 32, points 4, 5 and 6), without training.

A synthetic study (tests/test_study.py) gets a predictor graph (``predict/lora/predictor-fisher``),
and a user task is added to a temporary store with hand-written placement records on Fisher and on
that predictor graph (the files :func:`pitune_core.study.place.place_task` writes), plus a finished
``place-task`` run in a temporary registry, as the New task tab leaves them.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_study import NAMES, make_synthetic_study  # noqa: E402

from pitune_core.common import sha256_file  # noqa: E402
from pitune_core.data import user_tasks as U  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
APP = str(REPO / "dashboard" / "app.py")
TASK = "my_weather"
GRAPH = "predictor-fisher"


def _plain(markdown: str) -> str:
    return re.sub(r"\\(.)", r"\1", markdown)


@pytest.fixture
def placed(tmp_path, monkeypatch):
    from pitune_core.runs.registry import RunRegistry
    from pitune_core.study.read.placed import PLACEMENT_FILE, PLACEMENT_FORMAT, study_id

    monkeypatch.setenv("PITUNE_TASKS", str(tmp_path / "tasks"))
    root = make_synthetic_study(tmp_path / "study")
    src, dst = root / "predict" / "lora" / "fisher", root / "predict" / "lora" / GRAPH
    dst.mkdir()
    shutil.copy(src / "similarity.csv", dst / "similarity.csv")
    man = json.loads((root / "manifest.json").read_text())
    man["files"][f"predict/lora/{GRAPH}/similarity.csv"] = sha256_file(dst / "similarity.csv")
    (root / "manifest.json").write_text(json.dumps(man, indent=1))
    csv = "text,label\n" + "".join(f"sunny day {i},sunny\nrainy day {i},rainy\n" for i in range(10))
    U.save_task(U.draft_text_task(TASK, csv.encode(), "w.csv"))
    fisher_top = [["movie_sentiment", 0.9], ["tweet_sentiment", 0.8], ["bbc_topic", 0.7]]
    pct_top = [["tweet_sentiment", 1.0], ["bbc_topic", 0.95], ["movie_sentiment", 0.9]]
    base = U.task_dir(TASK) / U.PLACED_DIR / study_id(root)
    for emb, top, extra in (("fisher", fisher_top, {
            "expert": {"test": {"accuracy": 0.85, "macro_f1": 0.84}, "steps": 30, "metric": "accuracy",
                       "zero_shot": {"accuracy": 0.55, "macro_f1": 0.5}, "majority": {"accuracy": 0.5, "macro_f1": 0.33}},
            "num_train": 14, "num_test": 4, "max_shots": 7}), (GRAPH, pct_top, {})):
        sims = {n: 0.5 for n in NAMES} | dict(top)
        rec = {"format": PLACEMENT_FORMAT, "task": TASK, "method": "lora", "embedding": emb, "similarities": sims,
               "top_k": top, "position": [0.1, 0.2], **extra}
        (base / f"lora-{emb}").mkdir(parents=True)
        (base / f"lora-{emb}" / PLACEMENT_FILE).write_text(json.dumps(rec))
    db = tmp_path / "runs" / "registry.sqlite"
    reg = RunRegistry(db)
    run_id = reg.submit("place-task", {"task": TASK, "study": str(root), "method": "lora", "embedding": "fisher",
                                       "shots": 4, "seed": 0, "k": 3}, name=f"place {TASK}")
    reg.claim(run_id)
    reg.finish(run_id, "succeeded", {"task": TASK, "top_k": fisher_top, "embedding": "fisher",
                                     "also_placed_on": {GRAPH: pct_top}, "position": [0.1, 0.2],
                                     "expert_accuracy": 0.85, "time_s": 12.0})
    monkeypatch.setenv("PITUNE_STUDY", str(root))
    monkeypatch.setenv("PITUNE_RUNS_DB", str(db))
    return {"root": root, "run": run_id}


def test_a_placement_keeps_the_sidebars_graph_and_says_both_source_lists(placed):
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.sidebar.selectbox(key="embedding").set_value(GRAPH).run()
    at.session_state["view"] = "New task"
    at.session_state["nt_run"] = placed["run"]
    at.session_state["nt_task"] = TASK
    at.run()
    at.run()  # the placement's own rerun has happened: the sidebar still shows the graph the user chose
    assert not at.exception, [e.value for e in at.exception]
    assert at.sidebar.selectbox(key="embedding").value == GRAPH
    msg = _plain(next(s.value for s in at.success if "is placed on the graph" in s.value))
    assert "by Fisher: movie_sentiment (0.900)" in msg and "by predictor: fisher: tweet_sentiment (1.000)" in msg
    assert "The lists differ because each graph ranks by its own measure" in msg
    assert "switches" not in msg


def test_a_placement_switches_only_off_a_graph_that_does_not_draw_the_task(placed):
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.sidebar.selectbox(key="embedding").set_value("data").run()  # the task is not placed on "data"
    at.session_state["view"] = "New task"
    at.session_state["nt_run"] = placed["run"]
    at.session_state["nt_task"] = TASK
    at.run()
    at.run()
    assert at.sidebar.selectbox(key="embedding").value == "fisher"


def test_target_tab_shows_a_user_tasks_scores(placed):
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.sidebar.selectbox(key="target").set_value(TASK).run()
    at.session_state["view"] = "Target"
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Own expert (accuracy)"] == "85.0%"
    assert metrics["Zero-shot"] == "55.0%" and metrics["Majority class"] == "50.0%"


def test_placed_scores_refuses_what_is_not_a_score():
    from pitune_core.study.read.placed import placed_scores

    rec = {"expert": {"test": {"accuracy": 1.5}, "zero_shot": {"accuracy": "0.5"}, "majority": {"accuracy": 0.25},
                      "steps": 30}}
    assert placed_scores(rec, "accuracy") == {"expert": None, "zero_shot": None, "majority": 0.25,
                                              "metric": "accuracy", "steps": 30}
    assert placed_scores({}, "accuracy")["expert"] is None
