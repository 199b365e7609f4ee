"""The Streamlit dashboard (dashboard/app.py) through ``streamlit.testing.v1.AppTest``.

Behaviour tests run on a small synthetic study (tests/test_study.py writes it) and a temporary run
registry, so they need neither the full study nor any training; one test renders every tab on the
shipped ``precomputed/`` study (or ``$PITUNE_TEST_STUDY``) and is skipped when there is none. The
launch test replaces the background scheduler by a recorder, so no training process starts.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the synthetic study lives in test_study.py
import graphspec as GS  # noqa: E402
from test_study import COMPARE_TARGET, IA3_TASKS, NAMES, make_synthetic_study  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
APP = str(REPO / "dashboard" / "app.py")
TABS = ["Graph", "Map", "Target", "Tune & launch", "Runs & compare", "Study", "New task"]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return make_synthetic_study(tmp_path_factory.mktemp("study") / "study")


@pytest.fixture
def env(synthetic, tmp_path, monkeypatch):
    db = tmp_path / "runs" / "registry.sqlite"
    monkeypatch.setenv("PITUNE_STUDY", str(synthetic))
    monkeypatch.setenv("PITUNE_RUNS_DB", str(db))
    return {"study": synthetic, "db": db}


@pytest.fixture
def no_scheduler(monkeypatch):
    """Record ensure_scheduler calls instead of starting a detached scheduler (no training in tests)."""
    from pitune_core.runs import executor

    calls: list = []
    monkeypatch.setattr(executor, "ensure_scheduler", lambda db, *a, **kw: calls.append(str(db)) or 4242)
    return calls


def _app(view: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60).run()
    if view and view != TABS[0]:
        # switch tabs after the first run, as a click would (a tab preset before the first run
        # is pinned by its query parameter in AppTest)
        at.session_state["view"] = view
        at.run()
        assert at.session_state["view"] == view
    return at


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _topk(at: AppTest, key: str) -> list[str]:
    """The numbered lines of a top-k list container."""
    block = at.get_by_key(key)
    lines = []
    for md in block.markdown:
        lines += [ln for ln in md.value.splitlines() if ln[:1].isdigit()]
    return lines


def _spec(at: AppTest, key: str) -> dict:
    return json.loads(at.get_by_key(key).proto.spec)


def _graph_nodes(spec: dict) -> list[str]:
    return GS.nodes(spec)


def _table(at: AppTest, column: str):
    """The (pandas) value of the dataframe that has ``column``."""
    for df in at.dataframe:
        if column in df.value.columns:
            return df.value
    raise AssertionError(f"no table with a {column!r} column")


def _edges(at: AppTest) -> int:
    """The graph's edge count, as the Graph tab writes it ("**Edges**" and the number)."""
    return int(next(m.value for m in at.markdown if m.value.startswith("**Edges**")).split()[-1])


# ----------------------------------------------------------------------------- every tab renders

#: what only each tab draws: its heading (or the Graph tab's edge count), for the selected target
TAB_MARKS = {
    "Graph": lambda at: [m.value for m in at.markdown if m.value.startswith("**Edges**")],
    "Map": lambda at: [h.value for h in at.subheader if h.value == "Task map"],
    "Target": lambda at: [h.value for h in at.subheader if h.value == at.session_state["target"]],
    "Tune & launch": lambda at: [h.value for h in at.subheader
                                 if h.value == f"Interpolate and tune on `{at.session_state['target']}`"],
    "Runs & compare": lambda at: [h.value for h in at.subheader
                                  if h.value == f"Runs and baselines for `{at.session_state['target']}`"],
    "Study": lambda at: [m.value for m in at.markdown if m.value == "**Experts**"],
    "New task": lambda at: [h.value for h in at.subheader if h.value == "Bring your own task"],
}


@pytest.mark.parametrize("view", TABS)
def test_every_tab_renders(env, view):
    """Each tab draws its own content, once, and no other tab's (only the open tab is rendered)."""
    at = _app(view)
    _ok(at)
    assert at.title[0].value == "π-Tuning dashboard"
    assert [t.label for t in at.tabs] == TABS
    assert set(TAB_MARKS) == set(TABS)
    assert len(TAB_MARKS[view](at)) == 1, f"the {view} tab did not draw its heading"
    drawn = [other for other in TABS if other != view and TAB_MARKS[other](at)]
    assert drawn == [], f"the {view} view also drew the {drawn} tab(s)"


def test_every_tab_renders_on_the_shipped_study(monkeypatch, tmp_path):
    root = Path(os.environ.get("PITUNE_TEST_STUDY") or REPO / "precomputed")
    if not (root / "manifest.json").is_file():
        pytest.skip(f"no complete study at {root}: build it with `pitune precompute --out {root}` "
                    "(or set PITUNE_TEST_STUDY)")
    monkeypatch.setenv("PITUNE_STUDY", str(root))
    monkeypatch.setenv("PITUNE_RUNS_DB", str(tmp_path / "registry.sqlite"))
    at = _app()
    _ok(at)
    k = at.sidebar.slider(key="k").value
    assert len(_topk(at, "topk-graph")) == k
    for view in TABS[1:]:
        at.session_state["view"] = view
        at.run()
        _ok(at)
        if view == "Target":
            assert len(_topk(at, "topk-list")) == k


# ----------------------------------------------------------------------------- controls

def test_k_changes_the_listed_sources(env):
    at = _app()
    assert at.sidebar.slider(key="k").value == 3
    first = _topk(at, "topk-graph")
    assert len(first) == 3
    assert all(COMPARE_TARGET not in ln.split("—")[0] for ln in first)  # default target, never its own source
    at.sidebar.slider(key="k").set_value(5).run()
    assert len(_topk(at, "topk-graph")) == 5
    assert _topk(at, "topk-graph")[:3] == first  # the best three stay first
    # the dashed target → source lines follow k
    assert len(GS.rows(_spec(at, "graph_chart"), "target → top-k sources")) == 5
    at.session_state["view"] = "Target"
    at.run()
    _ok(at)
    assert len(_topk(at, "topk-list")) == 5
    bars = _spec(at, "topk_chart")["data"][0]
    assert len(bars["y"]) == 5
    at.sidebar.slider(key="k").set_value(1).run()
    assert len(_topk(at, "topk-list")) == 1
    assert len(_spec(at, "topk_chart")["data"][0]["y"]) == 1


def test_target_changes_what_is_shown(env):
    at = _app("Target")
    at.sidebar.selectbox(key="target").set_value("textures").run()
    _ok(at)
    assert at.subheader[0].value == "textures"
    lines = _topk(at, "topk-list")
    assert len(lines) == 3 and not any(ln.split(" ")[1].strip("*") == "textures" for ln in lines)
    gains = _table(at, "measured gain (pts)")  # textures is in the measured transfer matrix
    assert sorted(gains["source"]) == ["movie_sentiment", "sklearn_digits", "tweet_sentiment"]
    assert any("Best measured source" in m.value for m in at.markdown)
    at.sidebar.selectbox(key="target").set_value("bbc_topic").run()
    _ok(at)
    assert any("not among the measured transfer targets" in i.value for i in at.info)


def test_graph_controls(env):
    at = _app()
    spec = _spec(at, "graph_chart")
    assert sorted(_graph_nodes(spec)) == sorted(NAMES)
    assert [r["name"] for r in GS.rows(spec, "target")] == [COMPARE_TARGET]
    e3 = _edges(at)
    at.slider(key="graph_k").set_value(1).run()
    e1 = _edges(at)
    at.slider(key="graph_k").set_value(5).run()
    e5 = _edges(at)
    assert e1 < e3 < e5
    assert len(GS.rows(_spec(at, "graph_chart"), "edges")) == e5
    # threshold mode: a higher threshold keeps fewer edges
    at.radio(key="graph_mode").set_value("threshold").run()
    _ok(at)
    at.slider(key="graph_threshold").set_value(0.5).run()
    low = _edges(at)
    at.slider(key="graph_threshold").set_value(0.7).run()
    assert _edges(at) < low
    # communities are listed with the modalities they span
    comms = [m.value for m in at.markdown if " tasks, " in m.value and ":small[" in m.value]
    assert comms and all(any(mod in c for mod in ("language", "vision")) for c in comms)
    # the settings survive a visit to another tab (tabs render lazily)
    at.session_state["view"] = "Map"
    at.run()
    at.session_state["view"] = "Graph"
    at.run()
    assert at.radio(key="graph_mode").value == "threshold"
    assert at.slider(key="graph_threshold").value == pytest.approx(0.7)


def test_switch_expert_type_and_embedding(env):
    at = _app()
    at.sidebar.selectbox(key="embedding").set_value("weights").run()
    _ok(at)
    at.sidebar.selectbox(key="method").set_value("ia3").run()
    _ok(at)
    assert at.sidebar.selectbox(key="embedding").options == ["Fisher"]  # ia3 has Fisher only here
    assert sorted(at.sidebar.selectbox(key="target").options) == sorted(
        f"{t} ({m})" for t, m in (("movie_sentiment", "language"), ("tweet_sentiment", "language"),
                                  ("sklearn_digits", "vision"), ("mnist", "vision")))
    assert sorted(_graph_nodes(_spec(at, "graph_chart"))) == sorted(IA3_TASKS)
    assert at.sidebar.slider(key="k").max == len(IA3_TASKS) - 1


def test_map_tab(env):
    at = _app("Map")
    _ok(at)
    layout = _spec(at, "layout_chart")
    assert sorted(n for t in layout["data"] for n in t["customdata"]) == sorted(NAMES)
    heat = _spec(at, "heatmap_chart")["data"][0]
    assert sorted(heat["x"]) == sorted(NAMES)
    at.radio(key="heat_order").set_value("name").run()
    assert _spec(at, "heatmap_chart")["data"][0]["x"] == sorted(NAMES)
    at.sidebar.selectbox(key="embedding").set_value("data").run()  # no layout.csv for this one
    _ok(at)
    assert any("no layout" in i.value for i in at.info)


# ----------------------------------------------------------------------------- launching

def test_launch_submits_to_the_registry(env, no_scheduler):
    from pitune_core.runs.registry import RunRegistry

    at = _app("Tune & launch")
    _ok(at)
    at.select_slider(key="shots").set_value(4)
    at.number_input(key="seed").set_value(3)
    at.radio(key="weights_mode").set_value("learn-auto").run()
    at.button(key="launch").click().run()
    _ok(at)
    run_id = at.session_state["launched"]
    reg = RunRegistry(env["db"])
    rec = reg.get(run_id)
    assert rec.kind == "transfer" and rec.status == "queued"
    top3 = [ln.split("**")[1] for ln in _topk(_app(), "topk-graph")]
    # the default: the run ranks its own top-3 from its 4 shots (the protocol), none named here
    assert rec.config == {"target": COMPARE_TARGET, "k": 3, "method": "lora", "embedding": "fisher", "shots": 4,
                          "weights": "auto", "sources": None, "seed": 3, "study": str(env["study"].resolve()),
                          "weights_only": False, "own_expert": True, "robustness": False}
    assert any("4-shot sample" in c.value and "other examples" in c.value for c in at.caption)
    assert "ranked from its examples" in _run_sources_shown(at)
    assert no_scheduler == [str(env["db"])]
    assert any(run_id in s.value for s in at.success)
    # the live list shows it with a cancel button; a second launch queues beside it
    assert at.button(key=f"cancel_{run_id}")
    at.button(key="launch").click().run()
    second = at.session_state["launched"]
    assert second != run_id and {r.id for r in reg.list_runs(status="queued")} == {run_id, second}
    at.button(key=f"cancel_{run_id}").click().run()
    _ok(at)
    assert reg.get(run_id).status == "cancelled" and reg.get(second).status == "queued"
    # the graph's top-k, named: exactly the list the Graph tab shows
    at.radio(key="src_mode").set_value("top-k").run()
    at.button(key="launch").click().run()
    _ok(at)
    cfg = reg.get(at.session_state["launched"]).config
    assert cfg["sources"] == top3 and cfg["k"] == 3
    # hand-set weights cannot go with sources the run has not chosen yet: said, nothing queued
    at.radio(key="src_mode").set_value("shots")
    at.radio(key="weights_mode").set_value("hand").run()
    assert at.button(key="launch").disabled and any("need named sources" in w.value for w in at.warning)


def _run_sources_shown(at) -> str:
    at.session_state["view"] = "Runs & compare"
    at.run()
    _ok(at)
    table = _table(at, "sources")
    at.session_state["view"] = "Tune & launch"
    at.run()
    return " ".join(str(x) for x in table["sources"])


def test_hand_weights_are_normalised_and_chosen_sources_used(env, no_scheduler):
    from pitune_core.runs.registry import RunRegistry

    at = _app("Tune & launch")
    at.radio(key="src_mode").set_value("hand").run()
    at.multiselect(key="src_pick").set_value(["mnist", "textures"]).run()
    at.radio(key="weights_mode").set_value("hand").run()
    at.slider(key="hw_mnist").set_value(0.75)
    at.slider(key="hw_textures").set_value(0.25).run()
    _ok(at)
    shown = _spec(at, "init_weights_chart")["data"][0]
    assert shown["y"] == ["mnist", "textures"] and shown["x"] == pytest.approx([0.75, 0.25])
    at.slider(key="hw_textures").set_value(0.75).run()
    assert _spec(at, "init_weights_chart")["data"][0]["x"] == pytest.approx([0.5, 0.5])
    at.button(key="launch").click().run()
    _ok(at)
    cfg = RunRegistry(env["db"]).get(at.session_state["launched"]).config
    assert cfg["sources"] == ["mnist", "textures"] and cfg["weights"] == pytest.approx([0.5, 0.5])
    assert cfg["k"] == 2
    # all weights zero: the launch button is disabled and the problem is said
    at.slider(key="hw_mnist").set_value(0.0)
    at.slider(key="hw_textures").set_value(0.0).run()
    assert at.button(key="launch").disabled
    assert any("zero" in w.value for w in at.warning)


# ----------------------------------------------------------------------------- runs & compare

def _finished_run(db: Path, study: Path, status: str = "succeeded") -> str:
    from pitune_core.runs.registry import RunRegistry

    reg = RunRegistry(db)
    cfg = {"target": COMPARE_TARGET, "k": 2, "method": "lora", "embedding": "fisher", "shots": 4,
           "weights": "uniform", "sources": ["mnist", "textures"], "seed": 0, "study": str(study),
           "weights_only": False}
    run_id = reg.submit("transfer", cfg, name="test run")
    reg.claim(run_id)
    run_dir = reg.get(run_id).run_dir
    if status == "succeeded":
        (run_dir / "weights.json").write_text(json.dumps({"sources": cfg["sources"], "history": [
            {"step": 0, "weights": [0.5, 0.5]}, {"step": 5, "weights": [0.6, 0.4], "loss": 1.1},
            {"step": 10, "weights": [0.7, 0.3], "loss": 0.7}]}))
        (run_dir / "expert").mkdir()
        (run_dir / "expert" / "adapter_config.json").write_text("{}")
        (run_dir / "expert" / "adapter_model.safetensors").write_bytes(b"\0" * 64)
        reg.finish(run_id, "succeeded", {"accuracy": 0.8123, "val": {"accuracy": 0.79}, "steps": 10,
                                         "final_weights": [0.7, 0.3]})
    else:
        reg.finish(run_id, "failed", error="ValueError: broken on purpose", details="Traceback ...\nValueError")
    return run_id


def test_runs_and_compare_with_a_succeeded_run(env):
    run_id = _finished_run(env["db"], env["study"])
    at = _app("Runs & compare")
    _ok(at)
    fig = _spec(at, "compare_chart")  # the run's regime (4 shots) beside the study's approaches there
    assert at.radio(key="cmp_regime").value == "4-shot"
    means = next(t for t in fig["data"] if t.get("name", "").startswith("study: mean"))
    assert means["x"] == ["π-Tuning", "target-only", "uniform-avg"]  # compare/results.csv: 0.605, 0.505, 0.305
    assert means["y"] == pytest.approx([0.605, 0.505, 0.305])
    runs = next(t for t in fig["data"] if t.get("name", "").startswith("your runs"))
    assert runs["y"] == [0.8123] and run_id[-6:] in runs["x"][0]
    assert sorted(s["y0"] for s in fig["layout"]["shapes"]) == pytest.approx([0.3, 0.505])  # zero-shot, target-only
    assert at.selectbox(key="open_run").value == run_id
    assert "81.2%" in [m.value for m in at.metric]
    hist = {t["name"]: t for t in _spec(at, "run_weights_chart")["data"]}
    assert hist["mnist"]["y"] == [0.5, 0.6, 0.7] and hist["training loss"]["y"] == [1.1, 0.7]
    dl = at.download_button(key=f"download_{run_id}")
    assert dl.label.startswith("Download merged expert")
    assert list(_table(at, "accuracy")["run"]) == [run_id]


def test_failed_run_shows_its_error(env):
    run_id = _finished_run(env["db"], env["study"], status="failed")
    at = _app("Runs & compare")
    assert not at.exception
    assert at.selectbox(key="open_run").value == run_id
    assert any("broken on purpose" in e.value for e in at.error)
    at.session_state["view"] = "Tune & launch"
    at.run()
    finished = _table(at, "error")
    assert list(finished["run"]) == [run_id] and list(finished["status"]) == ["failed"]


def test_unreadable_registry_is_reported_not_raised(env):
    env["db"].parent.mkdir(parents=True, exist_ok=True)
    env["db"].write_bytes(b"this is not a sqlite database" * 100)
    at = _app("Tune & launch")
    assert not at.exception
    assert any("run registry" in e.value and "cannot be opened" in e.value for e in at.error)


# ----------------------------------------------------------------------------- missing / broken study

def test_missing_study_shows_how_to_rebuild(tmp_path, monkeypatch):
    missing = tmp_path / "no_study_here"
    monkeypatch.setenv("PITUNE_STUDY", str(missing))
    monkeypatch.setenv("PITUNE_RUNS_DB", str(tmp_path / "registry.sqlite"))
    at = _app()
    assert not at.exception
    assert "cannot be used" in at.error[0].value
    assert any(f"{missing} does not exist" in m.value for m in at.markdown)
    code = at.code[0].value
    assert f"pitune precompute --out {missing}" in code and "--quick" in code
    assert not at.tabs  # nothing else is attempted


def test_corrupt_study_lists_the_problems(tmp_path, monkeypatch):
    root = make_synthetic_study(tmp_path / "study")
    (root / "tasks.json").write_text("[]")
    (root / "transfer" / "predict_quality.json").unlink()
    monkeypatch.setenv("PITUNE_STUDY", str(root))
    monkeypatch.setenv("PITUNE_RUNS_DB", str(tmp_path / "registry.sqlite"))
    at = _app()
    assert not at.exception
    text = re.sub(r"\\(.)", r"\1", "\n".join(m.value for m in at.markdown))  # as shown: escapes resolved
    assert "corrupt (sha256 mismatch): tasks.json" in text
    assert "missing: transfer/predict_quality.json" in text
    assert "2 problems" in at.error[0].value


# ----------------------------------------------------------------------------- pitune dashboard

def test_dashboard_command(monkeypatch, tmp_path, capsys):
    from pitune_core.cli import dashboard as dashboard_cli
    from pitune_core.cli import main as cli

    calls = []
    monkeypatch.setattr(dashboard_cli.os, "execve", lambda path, argv, env: calls.append((path, argv, env)))
    monkeypatch.setattr(dashboard_cli.os, "chdir", lambda p: None)
    monkeypatch.delenv("PITUNE_STUDY", raising=False)
    assert cli.main(["dashboard", "--study", str(tmp_path / "s"), "--db", str(tmp_path / "r.sqlite"),
                     "--port", "8765"]) == 0
    path, argv, env = calls[-1]
    assert path == sys.executable and argv[1:4] == ["-m", "streamlit", "run"]
    assert argv[4] == str(REPO / "dashboard" / "app.py")
    opts = dict(zip(argv[5::2], argv[6::2]))
    assert opts == {"--server.address": "127.0.0.1", "--server.port": "8765", "--server.headless": "true",
                    "--browser.gatherUsageStats": "false", "--server.maxUploadSize": "100"}
    assert env["PITUNE_STUDY"] == str((tmp_path / "s").resolve())
    assert env["PITUNE_RUNS_DB"] == str((tmp_path / "r.sqlite").resolve())
    err = capsys.readouterr().err
    assert "warning" not in err and "not a complete study" in err
    assert cli.main(["dashboard", "--host", "0.0.0.0"]) == 0
    assert dict(zip(calls[-1][1][5::2], calls[-1][1][6::2]))["--server.address"] == "0.0.0.0"
    assert "warning: binding the dashboard to 0.0.0.0" in capsys.readouterr().err
    assert cli.main(["dashboard", "--port", "0"]) == 2


def test_streamlit_config_is_local_and_private():
    import tomllib

    cfg = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["address"] == "127.0.0.1" and cfg["server"]["headless"] is True
    assert cfg["browser"]["gatherUsageStats"] is False


def test_upload_limits_have_one_owner():
    """The server's upload cap and each upload widget's are the user task store's limits (the page
    states them), not Streamlit's default 200 MB (issue 32, point 9)."""
    import tomllib

    from pitune_core.cli.dashboard import streamlit_command
    from pitune_core.data.user_tasks import LIMITS

    cfg = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["maxUploadSize"] == LIMITS.upload_mb() == 100
    argv = streamlit_command()
    assert argv[argv.index("--server.maxUploadSize") + 1] == str(LIMITS.upload_mb())
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.session_state["view"] = "New task"
    at.run()
    up = at.get_by_key("nt_file_text").proto
    assert up.max_upload_size_mb == LIMITS.upload_mb("text") == 20
    at.radio(key="nt_kind").set_value("images").run()
    assert at.get_by_key("nt_file_images").proto.max_upload_size_mb == LIMITS.upload_mb("images") == 100


@pytest.mark.skipif(not (REPO / "precomputed" / "manifest.json").is_file(), reason="no shipped study")
def test_a_study_without_measurements_says_so_on_every_tab_that_would_show_them(tmp_path, monkeypatch):
    """Issue 27, point 5: until the measured studies are rebuilt on a new foundation, the dashboard
    opens on it and says plainly what it does not hold: no predictor ground truth (Target tab; the
    message named a file path of the first study's layout and nothing else) and no comparison (Runs &
    compare), while the Study tab counts zero pairs and zero protocol runs."""
    from studycopy import copy_without_measurements

    root = copy_without_measurements(REPO / "precomputed", tmp_path / "study")
    monkeypatch.setenv("PITUNE_STUDY", str(root))
    monkeypatch.setenv("PITUNE_RUNS_DB", str(tmp_path / "registry.sqlite"))
    at = _app("Target")
    _ok(at)
    assert any("Not measured in this study: no predictor ground truth" in i.value for i in at.info), \
        [i.value for i in at.info]
    at = _app("Runs & compare")
    _ok(at)
    assert any("it holds no comparison" in i.value for i in at.info), [i.value for i in at.info]
    at = _app("Study")
    _ok(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Ground-truth pairs"] == "0" and metrics["Protocol runs"] == "0", metrics
