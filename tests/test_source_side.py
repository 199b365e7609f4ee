"""The predictors' source side ships with the study (issue 32, point 1): a run or a placement reads
the study's rows (``predict/<method>/source-side/``) with the settings they were made with, and
computes nothing source-side; a row a study does not ship is computed once as a named stage with a
count. No torch model here: the rows are small arrays, the "backbone" only gives its id, and every
computation that must not happen raises.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from pitune_core.paths import StudyPaths
from pitune_core.predict import predictors as P

BB = SimpleNamespace(backbone_id="bb-test")
SOURCES = ["alpha", "beta", "gamma"]


def _experts(root: Path) -> dict[str, Path]:
    out = {}
    for i, s in enumerate(SOURCES):
        d = root / "experts" / "lora" / s
        d.mkdir(parents=True)
        (d / "adapter_model.safetensors").write_bytes(bytes([i]) * 32)
        (d / "pitune_expert.json").write_text("{}")
        out[s] = d
    return out


def _row(source: str) -> dict[str, np.ndarray]:
    return {"pooled": np.arange(3, dtype=float) + SOURCES.index(source)}


@pytest.fixture
def fake_data(monkeypatch):
    """The data predictor's source side, counted: every call is a computation."""
    calls = []

    def data_embedding(source, backbone, n, seed):
        calls.append(source)
        return _row(source)

    monkeypatch.setattr(P, "data_embedding", data_embedding)
    return calls


def test_shipped_rows_are_read_with_the_studys_settings_and_nothing_is_computed(tmp_path, fake_data):
    study = tmp_path / "study"
    experts = _experts(study)
    maker = P.PredictorContext(BB, experts, data_n=17, seed=3)  # the ground truth's settings, not the defaults
    files = P.ship_source_side(["data", "same_modality"], maker, StudyPaths(study).source_side("lora"))
    assert fake_data == SOURCES  # one computation per source, while the study is made
    assert json.loads(files[0].read_text())["data_n"] == 17
    assert sorted(f.name.split("-")[1] for f in files[1:]) == SOURCES
    fake_data.clear()
    seen = []
    ctx = P.study_context(study, BB, experts, "lora", cache_dir=tmp_path / "user-cache", on_progress=seen.append)
    assert (ctx.data_n, ctx.seed) == (17, 3)
    rows = [P._source_data(s, ctx)["pooled"] for s in SOURCES]
    assert fake_data == [] and seen == []  # read from the study: nothing computed, no first-use stage
    assert [r.tolist() for r in rows] == [_row(s)["pooled"].tolist() for s in SOURCES]
    assert not (tmp_path / "user-cache").exists()


def test_a_row_the_study_does_not_ship_is_a_counted_stage(tmp_path, fake_data):
    study = tmp_path / "study"
    experts = _experts(study)
    seen = []
    ctx = P.study_context(study, BB, experts, "lora", cache_dir=tmp_path / "user-cache", on_progress=seen.append)
    assert ctx.shipped is None
    for s in SOURCES:
        P._source_data(s, ctx)
    assert fake_data == SOURCES
    done = [p for p in seen if p["step"] == p["total"] or p["step"] >= 1]
    assert all(p["stage"].startswith(P.SOURCE_STAGE) for p in seen)
    assert [(p["step"], p["total"]) for p in seen][-1] == (3, 3) and done
    again = P.study_context(study, BB, experts, "lora", cache_dir=tmp_path / "user-cache")
    fake_data.clear()
    P._source_data("alpha", again)
    assert fake_data == []  # computed once, then the user's cache


def test_shipping_copies_rows_already_computed(tmp_path, fake_data):
    """A resumed ground truth whose rows sit in the user's cache (or in memory) ships them without
    computing them again."""
    study = tmp_path / "study"
    experts = _experts(study)
    user = tmp_path / "user-cache"
    warm = P.PredictorContext(BB, experts, cache_dir=user)
    for s in SOURCES[:2]:
        P._source_data(s, warm)
    fake_data.clear()
    cold = P.PredictorContext(BB, experts, cache_dir=user)  # a new process: nothing in memory
    files = P.ship_source_side(["data"], cold, StudyPaths(study).source_side("lora"))
    assert fake_data == ["gamma"] and len(files) == 1 + len(SOURCES)


def test_the_ground_truth_ships_rows_for_every_expert_of_the_study(tmp_path, fake_data, monkeypatch):
    """run_groundtruth's predictors stage, inside the study: the rows of every study expert (not only the
    plan's tasks) land in predict/<method>/source-side/ and in the manifest."""
    from pitune_core.study import groundtruth as GT

    study = tmp_path / "study"
    experts = _experts(study)
    (study / "manifest.json").write_text(json.dumps({"files": {}}))
    plan = SimpleNamespace(method="lora", predictors=["data"], tasks=SOURCES[:2])
    ctx = P.PredictorContext(BB, {s: experts[s] for s in SOURCES[:2]}, cache_dir=tmp_path / "user-cache")
    files = GT._ship_source_side(plan, ctx, study)
    assert sorted(fake_data) == SOURCES
    listed = json.loads((study / "manifest.json").read_text())["files"]
    assert {f.relative_to(study).as_posix() for f in files} <= set(listed)
    assert "predict/lora/source-side/context.json" in listed
