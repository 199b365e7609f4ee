"""Bring your own task: ``pitune task add/place`` → ``top-k`` → ``transfer`` on a text CSV and on a
folder of images (both generated here, not from the suite), the dashboard's upload flow (AppTest),
and one test per bad input, each checking the one-line message and that nothing was written.

The flows place tasks on the shipped study (``precomputed/``) but write only into a temporary
``PITUNE_TASKS`` store; ``pitune verify precomputed`` is checked to still pass. Training budgets are
tiny (a few steps): these tests check the plumbing, not accuracy.
"""

from __future__ import annotations

import io
import json
import re
import struct
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

import graphspec as GS
from pitune_core.cli.main import main
from pitune_core.data import user_tasks as U

REPO = Path(__file__).resolve().parent.parent
STUDY = REPO / "precomputed"
needs_study = pytest.mark.skipif(not (STUDY / "manifest.json").is_file(), reason="no shipped study")

WEATHER = {"sunny": ["bright sunshine all afternoon", "clear blue skies over the bay", "a warm dry day with sun",
                     "sunny spells and no clouds", "hot and cloudless until evening", "golden sun on the hills",
                     "sunglasses weather by noon", "the sun stays out all day"],
           "rainy": ["heavy showers through the night", "drizzle and grey clouds", "umbrellas needed all morning",
                     "downpours flood the streets", "steady rain until dusk", "wet and stormy with thunder",
                     "puddles everywhere after the storm", "rain lashing the windows"]}


def weather_csv(path: Path) -> Path:
    lines = ["text,label"] + [f"\"{t}\",{lab}" for lab, ts in WEATHER.items() for t in ts]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def shape_folder(root: Path, per_class: int = 6) -> Path:
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    for cls in ("circle", "square"):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            im = Image.new("RGB", (48, 48), "white")
            x, y = rng.integers(2, 14, size=2)
            box = [int(x), int(y), int(x) + 28, int(y) + 28]
            color = tuple(int(c) for c in rng.integers(0, 200, size=3))
            (ImageDraw.Draw(im).ellipse if cls == "circle" else ImageDraw.Draw(im).rectangle)(box, fill=color)
            im.save(root / cls / f"{i}.png")
    return root


def _plain(markdown: str) -> str:
    """A message as the page shows it (the dashboard escapes markup characters)."""
    return re.sub(r"\\(.)", r"\1", markdown)


def nothing_written(store: Path) -> bool:
    return not store.exists() or not any(store.iterdir())


def run_cli(args, capsys) -> tuple[int, str, str]:
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


# ----------------------------------------------------------------------------- the flows

def _flow(name: str, add_args: list[str], store: Path, tmp_path: Path, capsys) -> dict:
    rc, out, err = run_cli(["task", "add", name, *add_args], capsys)
    assert rc == 0, err
    assert (store / name / "task.json").is_file()
    rc, out, err = run_cli(["task", "place", name, "--shots", "2", "--k", "2", "--study", str(STUDY)], capsys)
    assert rc == 0, err
    assert "top-2 sources by fisher (cosine similarity):" in out and "transformed into the existing layout" in out
    rec = json.loads(next((store / name / "placed").glob("*/lora-fisher/placement.json")).read_text())
    names = json.loads((STUDY / "tasks.json").read_text())
    assert set(rec["similarities"]) == {t["name"] for t in names}  # beside every task, offered as a source or not
    from pitune_core.study.read.reader import Study

    assert not {n for n, _ in rec["top_k"]} & set(Study(STUDY).gated("lora"))  # sources: offered ones only
    assert all(0.0 <= s <= 1.0 for s in rec["similarities"].values())
    assert rec["examples_used"] == 4  # 2 shots x 2 classes: its embedding saw nothing else
    assert len(rec["position"]) == 2
    # also placed on the study's default ranking when that is a predictor graph (same-modality here)
    from pitune_core.study.read.reader import Study

    default = Study(STUDY).default_embedding("lora")[0]
    if default.startswith("predictor-"):
        assert f"also placed on {default}" in out and list(rec["also_placed_on"]) == [default]
        prec = json.loads(next((store / name / "placed").glob(f"*/lora-{default}/placement.json")).read_text())
        assert set(prec["similarities"]) == set(Study(STUDY).prediction_names("lora", default)) - {name}
        assert prec["top_k"] == rec["also_placed_on"][default] and len(prec["position"]) == 2
        if default == "predictor-same_modality":
            modality = {t["name"]: t["modality"] for t in names}
            assert all(modality[n] == rec["modality"] for n, _ in prec["top_k"])
    rc, out, err = run_cli(["top-k", name, "--k", "2", "--study", str(STUDY)], capsys)
    assert rc == 0, err
    assert [ln.split("\t")[0] for ln in out.strip().splitlines()] == [n for n, _ in rec["top_k"]]
    rc, out, err = run_cli(["tasks", "--no-load", "--json"], capsys)
    assert any(r["name"] == name and r.get("user_task") for r in json.loads(out))
    run = tmp_path / f"run-{name}"
    rc, out, err = run_cli(["transfer", name, "--shots", "2", "--k", "2", "--study", str(STUDY),
                            "--out", str(run)], capsys)
    assert rc == 0, err
    res = json.loads((run / "metrics.json").read_text())
    # the run ranks its sources from the same 2 shots and seed, the same way: the placement's top-k
    assert res["target"] == name and res["sources"] == [n for n, _ in rec["top_k"]]
    assert 0.0 <= res["accuracy"] <= 1.0
    return rec


@needs_study
def test_text_task_add_place_transfer(store, tmp_path, capsys):
    _flow("my_weather", ["--text", str(weather_csv(tmp_path / "weather.csv")),
                         "--verbalizer", "sunny=a sunny day", "--verbalizer", "rainy=a rainy day"], store,
          tmp_path, capsys)
    spec = U.read_spec("my_weather")
    assert spec["verbalizers"] == ["a rainy day", "a sunny day"] and spec["modality"] == "language"
    rc, _, err = run_cli(["verify", str(STUDY), "--no-load"], capsys)
    assert rc == 0, err  # nothing was written into the study


@needs_study
def test_image_folder_task_add_place_transfer(store, tmp_path, capsys):
    rec = _flow("my_shapes", ["--images", str(shape_folder(tmp_path / "shapes"))], store, tmp_path, capsys)
    assert rec["modality"] == "vision"
    images = list((store / "my_shapes" / "images").iterdir())
    assert len(images) == 12 and all(p.stem == U._sha256(p.read_bytes()) for p in images)
    from pitune_core.paths import cache_dir

    feats = list((cache_dir() / "features").glob("*/v*/user-my_shapes-*.safetensors"))  # per vision config, data version
    assert len(feats) == 1  # image features cached like a built-in task's, keyed by the images' hash
    rc, out, _ = run_cli(["task", "remove", "my_shapes"], capsys)
    assert rc == 0 and not (store / "my_shapes").exists()
    assert not feats[0].exists()


def test_store_round_trip_and_seeded_split(store, tmp_path):
    d = U.draft_text_task("my_weather", weather_csv(tmp_path / "w.csv").read_bytes(), "w.csv")
    U.save_task(d)
    from pitune_core.data.tasks import get_task, list_tasks

    spec = get_task("my_weather")
    data = spec.load()
    assert (len(data.train), len(data.val), len(data.test)) == (10, 2, 4)  # per class: 5 / 1 / 2
    assert set(np.unique(data.test.labels)) == {0, 1}  # stratified: every class is tested
    assert "my_weather" not in [t.name for t in list_tasks()]  # a study's suite stays the built-ins
    assert "my_weather" in [t.name for t in list_tasks(include_user=True)]
    assert get_task("movie_sentiment").name == "movie_sentiment"
    assert not list(store.glob(".*"))  # no temporary folders left
    U.set_verbalizers("my_weather", ["sunny=sunshine"])
    assert get_task("my_weather").verbalizers == ("rainy", "sunshine")


# ----------------------------------------------------------------------------- bad inputs

def _zip(entries: dict[str, bytes], compress=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compress) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _png(w: int, h: int) -> bytes:
    """A PNG header claiming w×h pixels (valid chunks and CRCs) with a tiny image body."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def _small_png(color=(10, 200, 30)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (20, 20), color).save(buf, "PNG")
    return buf.getvalue()


def _classes(bad_name: str, bad: bytes) -> dict[str, bytes]:
    good = {f"{c}/{i}.png": _small_png((40 * i, 20, 100 if c == 'a' else 200)) for c in ("a", "b") for i in range(3)}
    return {**good, bad_name: bad}


BAD_TEXT = [
    ("missing column", b"sentence,label\nhello,a\nbye,b\n", "has no text column 'text'"),
    ("misnamed column", b"Text,label\nhello,a\nbye,b\n", "did you mean 'Text'?"),
    ("empty file", b"", "is empty"),
    ("single class", b"text,label\nhello,a\nhi,a\nhey,a\n", "has a single class ('a')"),
    ("label empty after stripping", b"text,label\nhello,a\nbye,   \n", "line 3: the label is empty (after stripping spaces)"),
    ("non-UTF-8 text", "text,label\ncaf\u00e9,a\nbye,b\n".encode("latin-1"), "is not UTF-8 text (byte 0xe9"),
    ("header only", b"text,label\n", "has a header but no rows"),
    ("bad JSONL", b'{"text": "a", "label": "x"}\n[1, 2]\n', "line 2: expected a JSON object"),
    ("too few examples in a class", b"text,label\na,x\nb,x\nc,x\nd,y\n", "class 'y' has only 1 example"),
]


@pytest.mark.parametrize("case,data,message", BAD_TEXT, ids=[c[0] for c in BAD_TEXT])
def test_bad_text_input(case, data, message, store, tmp_path, capsys):
    f = tmp_path / ("in.jsonl" if data.startswith(b"{") else "in.csv")
    f.write_bytes(data)
    rc, out, err = run_cli(["task", "add", "my_task", "--text", str(f)], capsys)
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("pitune: error: ") and message in err, err
    assert nothing_written(store)


BAD_IMAGES = [
    ("unreadable image", "b/bad.png", b"this is not a png", "is not an image Pillow can read"),
    ("truncated image", "b/cut.png", None, "is truncated or corrupt"),
    ("enormous image", "b/huge.png", _png(9000, 9000), "over the 40-megapixel limit"),
    ("zip-slip", "../escape/a.png", b"x", "a path that leaves its folder (zip-slip)"),
    ("absolute path in zip", "/etc/a.png", b"x", "a path that leaves its folder (zip-slip)"),
    ("zip bomb", "b/bomb.png", b"\x00" * (4 * 2**20), "(a zip bomb?)"),
]


@pytest.mark.parametrize("case,member,data,message", BAD_IMAGES, ids=[c[0] for c in BAD_IMAGES])
def test_bad_image_zip(case, member, data, message, store, tmp_path, capsys):
    if data is None:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
        data = buf.getvalue()[: len(buf.getvalue()) // 2]  # cut in the middle of the image data
    z = tmp_path / "shapes.zip"
    z.write_bytes(_zip(_classes(member, data)))
    rc, out, err = run_cli(["task", "add", "my_task", "--images", str(z)], capsys)
    assert rc == 2
    assert err.count("\n") == 1 and message in err, err
    assert nothing_written(store)


@pytest.mark.parametrize("name,message", [("movie_sentiment", "is a built-in task"),
                                          ("../evil", "is not a safe identifier"),
                                          ("My Task", "is not a safe identifier")])
def test_bad_names(name, message, store, tmp_path, capsys):
    rc, _, err = run_cli(["task", "add", name, "--text", str(weather_csv(tmp_path / "w.csv"))], capsys)
    assert rc == 2 and message in err and err.count("\n") == 1
    assert nothing_written(store)


def test_upload_over_the_size_limit(store):
    small = U.Limits(max_upload_bytes=1000, max_text_bytes=1000)
    with pytest.raises(U.UserTaskError, match="over the 0 MB upload limit"):
        U.draft_image_task("my_task", (_zip(_classes("b/x.png", _small_png())) + b"\0" * 1000, "up.zip"), limits=small)
    with pytest.raises(U.UserTaskError, match="limit for one file"):
        U.draft_text_task("my_task", b"text,label\n" + b"a,b\n" * 400, "up.csv", limits=small)
    assert nothing_written(store)


def test_shots_more_than_a_class_has(store, tmp_path, capsys):
    U.save_task(U.draft_text_task("my_weather", weather_csv(tmp_path / "w.csv").read_bytes(), "w.csv"))
    rc, _, err = run_cli(["task", "place", "my_weather", "--shots", "50", "--study", str(STUDY)], capsys)
    assert rc == 2 and "shots=50 is larger than the data" in err and err.count("\n") == 1
    assert not (store / "my_weather" / "placed").exists()


def test_existing_name_is_refused_and_kept(store, tmp_path, capsys):
    U.save_task(U.draft_text_task("my_weather", weather_csv(tmp_path / "w.csv").read_bytes(), "w.csv"))
    before = (store / "my_weather" / "examples.csv").read_bytes()
    rc, _, err = run_cli(["task", "add", "my_weather", "--text", str(weather_csv(tmp_path / "w2.csv"))], capsys)
    assert rc == 2 and "already exists" in err
    assert (store / "my_weather" / "examples.csv").read_bytes() == before


# ----------------------------------------------------------------------------- the dashboard

@needs_study
def test_dashboard_upload_flow(store, tmp_path, monkeypatch):
    """Upload a CSV on the "New task" tab, see the preview, add it: a ``place-task`` run is queued
    (the scheduler is replaced by a recorder); the run's job is then executed here with a tiny budget,
    and the task appears on the Graph tab, highlighted, and as a target choice."""
    from streamlit.testing.v1 import AppTest

    from pitune_core.runs import executor
    from pitune_core.runs.registry import RunRegistry
    from pitune_core.study.place import PlaceConfig, place_task
    from pitune_core.study.read.reader import Study

    db = tmp_path / "runs" / "registry.sqlite"
    monkeypatch.setenv("PITUNE_STUDY", str(STUDY))
    monkeypatch.setenv("PITUNE_RUNS_DB", str(db))
    calls = []
    monkeypatch.setattr(executor, "ensure_scheduler", lambda d, *a, **kw: calls.append(str(d)) or 4242)
    at = AppTest.from_file(str(REPO / "dashboard" / "app.py"), default_timeout=120).run()
    at.session_state["view"] = "New task"
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("Limits:" in c.value for c in at.caption)
    csv_bytes = weather_csv(tmp_path / "w.csv").read_bytes()
    at.file_uploader(key="nt_file_text").set_value(("weather.csv", csv_bytes, "text/csv"))
    at.text_input(key="nt_name").set_value("movie_sentiment").run()
    assert any("is a built-in task" in _plain(e.value) for e in at.error)  # the message on the page, no traceback
    at.text_input(key="nt_name").set_value("my_weather").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.dataframe[0].value.shape[0] == 10  # the preview
    at.text_input(key="nt_verbal_my_weather_sunny").set_value("a sunny day")
    at.button(key="nt_place").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert calls, "the scheduler was not asked to start"
    rec = RunRegistry(db).list_runs(kind="place-task")[0]
    assert rec.config["task"] == "my_weather" and rec.status == "queued"
    assert U.read_spec("my_weather")["verbalizers"] == ["rainy", "a sunny day"]
    cfg = rec.config
    place_task(cfg["task"], cfg["study"], PlaceConfig(shots=cfg["shots"], method=cfg["method"], max_steps=3))
    at = AppTest.from_file(str(REPO / "dashboard" / "app.py"), default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    spec = json.loads(at.get_by_key("graph_chart").proto.spec)
    assert "my_weather" in GS.nodes(spec)
    assert [r["name"] for r in GS.rows(spec, "your tasks")] == ["your task: my_weather"]
    assert "my_weather (language)" in at.sidebar.selectbox(key="target").options
    at.sidebar.selectbox(key="embedding").set_value("data").run()  # a graph the task is not placed on: said so
    assert not at.exception, [e.value for e in at.exception]
    assert any("my_weather is not on this graph" in _plain(c.value) and "Fisher" in c.value for c in at.caption)
    at.sidebar.selectbox(key="embedding").set_value(Study(STUDY).default_embedding("lora")[0]).run()
    at.sidebar.selectbox(key="target").set_value("my_weather").run()
    at.session_state["view"] = "Map"
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    spec = json.loads(at.get_by_key("layout_chart").proto.spec)
    assert any(t.get("name") == "your task" for t in spec["data"])
    at.session_state["view"] = "Tune & launch"
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    at.button(key="launch").click().run()  # the default 16 shots: more than the task has
    assert any("is more than my_weather has" in _plain(e.value) for e in at.error), [e.value for e in at.error]
    assert not RunRegistry(db).list_runs(kind="transfer")
    at.select_slider(key="shots").set_value(4).run()
    at.button(key="launch").click().run()  # the default: the run ranks its top-k from its own 4 shots
    assert not at.exception, [e.value for e in at.exception]
    runs = RunRegistry(db).list_runs(kind="transfer")
    assert runs and runs[0].config["target"] == "my_weather" and runs[0].config["sources"] is None
    at.radio(key="src_mode").set_value("top-k").run()  # the graph's top-k: the placement's
    at.button(key="launch").click().run()
    assert not at.exception, [e.value for e in at.exception]
    runs = RunRegistry(db).list_runs(kind="transfer")
    assert len(runs) == 2 and runs[0].config["sources"], [r.config for r in runs]
    # the run ranks with the sidebar's embedding: the study's default (a predictor graph when its ground
    # truth says so), on which the task was placed as well as on Fisher
    emb = runs[0].config["embedding"]
    assert emb == Study(STUDY).default_embedding("lora")[0]
    placed = json.loads(next((store / "my_weather" / "placed").glob(f"*/lora-{emb}/placement.json")).read_text())
    assert runs[0].config["sources"] == [n for n, _ in placed["top_k"]][: runs[0].config["k"]]


def test_dashboard_bad_uploads_show_one_line(store, tmp_path, monkeypatch):
    """Bad uploads on the "New task" tab: the message on the page, no exception, nothing stored."""
    from streamlit.testing.v1 import AppTest

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_study import make_synthetic_study

    monkeypatch.setenv("PITUNE_STUDY", str(make_synthetic_study(tmp_path / "study")))
    monkeypatch.setenv("PITUNE_RUNS_DB", str(tmp_path / "runs" / "registry.sqlite"))
    # tiny limits from the start: the upload widget's own limit follows them (a widget whose limit
    # changes is a new widget, so they are not changed under it)
    monkeypatch.setattr(U, "LIMITS", U.Limits(max_text_bytes=100, max_upload_bytes=100))
    at = AppTest.from_file(str(REPO / "dashboard" / "app.py"), default_timeout=120).run()
    at.session_state["view"] = "New task"
    at.run()
    at.text_input(key="nt_name").set_value("my_task")
    at.file_uploader(key="nt_file_text").set_value(("w.csv", "text,label\ncaf\u00e9,a\n".encode("latin-1"), "text/csv"))
    at.run()
    assert not at.exception and any("is not UTF-8 text" in _plain(e.value) for e in at.error), [e.value for e in at.error]
    at.file_uploader(key="nt_file_text").set_value(("w.csv", b"text,label\n" + b"hello,a\n" * 40, "text/csv"))
    at.run()
    assert any("over the 0 MB limit for this kind of upload" in _plain(e.value) for e in at.error), [e.value for e in at.error]
    monkeypatch.setattr(U, "LIMITS", U.Limits())
    at.radio(key="nt_kind").set_value("images").run()
    at.file_uploader(key="nt_file_images").set_value(("x.zip", _zip(_classes("../up/a.png", b"x")), "application/zip"))
    at.run()
    assert not at.exception and any("(zip-slip)" in _plain(e.value) for e in at.error), [e.value for e in at.error]
    assert nothing_written(store)


def test_a_growing_study_keeps_its_placements(tmp_path):
    """A placement is filed under the study's identity: it must survive the study's protocol runs being
    appended to its manifest (they did not, when the identity hashed the whole manifest), and change
    when what a placement depends on (projector, experts, embeddings) changes."""
    import json as _json

    from pitune_core.study.read.placed import study_id

    root = tmp_path / "study"
    root.mkdir()
    files = {"backbone/projector.safetensors": "a" * 64, "experts/lora/mnist/adapter_model.safetensors": "b" * 64,
             "predict/lora/fisher/embeddings.safetensors": "c" * 64}

    import itertools
    import os

    tick = itertools.count(1)

    def write(extra):  # every write a new mtime: the identity is cached per (path, mtime, size)
        (root / "manifest.json").write_text(_json.dumps({"files": {**files, **extra}}))
        t = next(tick) * 10**9
        os.utime(root / "manifest.json", ns=(t, t))
        return study_id(root)

    first = write({})
    assert write({"protocol/few-shot-v2/runs.jsonl": "d" * 64}) == first
    assert write({"protocol/few-shot-v2/runs.jsonl": "e" * 64, "REPORT.md": "f" * 64,
                  "predict/lora/predictor-random/similarity.csv": "0" * 64}) == first
    files["experts/lora/mnist/adapter_model.safetensors"] = "9" * 64
    assert write({}) != first
    (root / "manifest.json").write_text("not json")
    assert study_id(root).startswith("path-")


def test_the_switch_after_placing_survives_a_stale_click():
    """After placing, the sidebar switches to the Fisher graph. A click the browser sent before it saw
    the switch carries the old value; the switch is re-applied until the browser holds the new value,
    and a value the user picks afterwards is left alone."""
    from streamlit.testing.v1 import AppTest

    def script():
        import streamlit as st

        from dashboard.new_task import apply_pending_switch

        apply_pending_switch()
        st.selectbox("embedding", ["predictor-same_modality", "fisher", "data"], key="embedding")

    from dashboard.new_task import SWITCH_KEY

    at = AppTest.from_function(script)
    at.session_state["embedding"] = "predictor-same_modality"
    at.session_state[SWITCH_KEY] = ("fisher", "predictor-same_modality")
    at.run()
    assert at.selectbox[0].value == "fisher"
    at.session_state["embedding"] = "predictor-same_modality"  # a stale click from the browser
    at.run()
    assert at.selectbox[0].value == "fisher"
    at.run()  # the browser now holds "fisher": the request is done
    assert SWITCH_KEY not in at.session_state
    at.selectbox[0].set_value("predictor-same_modality").run()  # the user's own choice afterwards stays
    assert at.selectbox[0].value == "predictor-same_modality"


def test_image_preview_shows_every_class(store, tmp_path):
    """A folder sorted by class kept only its first class's images for the preview (issue 32, point 10)."""
    d = U.draft_image_task("shapes", shape_folder(tmp_path / "shapes", per_class=30))
    labels = [lab for lab, _ in d.thumbnails]
    assert set(labels) == {"circle", "square"}
    assert labels.count("circle") == labels.count("square") == U.THUMBS_PER_CLASS
