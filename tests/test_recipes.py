"""The probe rule of the experts stage (pitune_core/study/recipes.py): decided on val, recorded once, and the
kept expert is an ordinary adapter that the stage accepts on its next run."""

from __future__ import annotations

import hashlib
import json

import pytest

from pitune_core.model.experts import TrainConfig, read_expert_meta, train_expert
from pitune_core.spec.vocab import EXPERT_META_FILE, PROBE_GAP_POINTS
from pitune_core.study import recipes
from pitune_core.study.pipeline import _expert_ok

STEPS = 6  # far too few for the probe bar: the rule must fire


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def default_expert(tmp_path, backbone):
    d = tmp_path / "sklearn_digits"
    train_expert("sklearn_digits", "lora", backbone, seed=0, out=d, train_config=TrainConfig(seed=0, max_steps=STEPS))
    return d


def test_an_expert_under_the_bar_on_val_gets_the_second_recipe_and_keeps_the_better_on_val(default_expert, backbone):
    before = read_expert_meta(default_expert)
    rec = recipes.apply_probe_rule(default_expert, backbone, STEPS)
    assert rec["default_val"] == before["metrics"]["val"]["accuracy"]
    assert 100 * (rec["probe_val"] - rec["default_val"]) > PROBE_GAP_POINTS  # the precondition of this test
    assert "second_val" in rec  # the rule fired
    meta = read_expert_meta(default_expert)
    assert meta["recipe"] == rec
    kept_second = rec["second_val"] > rec["default_val"]
    assert rec["name"] == (recipes.SECOND_RECIPE["name"] if kept_second else "default")
    assert meta["metrics"]["val"]["accuracy"] == max(rec["default_val"], rec["second_val"])
    assert meta["train_config"]["max_steps"] == (recipes.second_recipe_steps(STEPS) if kept_second else STEPS)
    # an ordinary adapter: no dropout in what is saved, zero-shot baselines kept
    cfg = json.loads((default_expert / "adapter_config.json").read_text())
    assert cfg["lora_dropout"] == 0.0 and meta["method_config"]["dropout"] == 0.0
    assert meta["metrics"]["zero_shot_val"] == before["metrics"]["zero_shot_val"]
    # the experts stage accepts it as finished, and a second application changes nothing
    assert _expert_ok(default_expert, backbone.backbone_id, 0, STEPS)
    sha = _sha(default_expert / EXPERT_META_FILE)
    assert recipes.apply_probe_rule(default_expert, backbone, STEPS) == rec
    assert _sha(default_expert / EXPERT_META_FILE) == sha


def test_an_expert_within_the_bar_on_val_is_kept_and_only_its_decision_recorded(default_expert, backbone, monkeypatch):
    val = read_expert_meta(default_expert)["metrics"]["val"]["accuracy"]
    monkeypatch.setattr(recipes, "linear_probe", lambda spec, bb: {"probe_val": val + 0.01, "probe_test": 1.0, "probe_c": 1.0})
    monkeypatch.setattr(recipes, "train_expert", lambda *a, **k: pytest.fail("the rule must not train a second expert"))
    adapter = _sha(default_expert / "adapter_model.safetensors")
    rec = recipes.apply_probe_rule(default_expert, backbone, STEPS)
    assert rec["name"] == "default" and "second_val" not in rec
    assert _sha(default_expert / "adapter_model.safetensors") == adapter
    assert read_expert_meta(default_expert)["recipe"] == rec
