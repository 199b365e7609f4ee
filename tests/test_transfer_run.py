"""`pitune transfer` / `pitune compare` as a user runs them, and their refusals of bad input."""

import csv
import json

import pytest

from pitune_core.cli.main import main
from pitune_core.study.sources import load_sources
from pitune_core.tune.run import prepare_transfer, run_transfer


def cfg(study, **kw):
    return {"target": "sklearn_digits", "k": 2, "shots": 2, "study": str(study), "seed": 0, **kw}


def prepare(config):
    """What the CLI and the registry job do: the sources come from the study, the run gets them."""
    return prepare_transfer(config, load_sources(config["study"], config.get("method", "lora")))


def test_transfer_run_writes_a_complete_run_directory(quick_study, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["transfer", "sklearn_digits", "--k", "2", "--shots", "2", "--study", str(quick_study),
                 "--weights", "auto", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    config = json.loads((out / "config.json").read_text())
    weights = json.loads((out / "weights.json").read_text())
    assert config["k"] == 2 and len(config["sources"]) == 2 and "sklearn_digits" not in config["sources"]
    assert 0 <= metrics["accuracy"] <= 1 and sum(metrics["final_weights"]) == pytest.approx(1.0)
    assert weights["history"][0]["step"] == 0 and weights["history"][-1]["step"] == metrics["steps"]
    assert (out / "expert" / "adapter_model.safetensors").exists() and not (out / "FAILED").exists()
    from pitune_core.model.experts import read_expert_meta

    # the paper's recipe: the target's own expert, trained on the run's 2 shots only, is interpolated too
    assert config["own_expert"] is True and metrics["own_expert"] is True
    own = read_expert_meta(out / "own")
    assert own["task"] == "sklearn_digits" and own["shots"] == 2 and own["steps"] == config["steps_select"] > 0
    assert read_expert_meta(out / "expert")["interpolation"]["sources"] == config["sources"] + ["sklearn_digits"]
    assert weights["sources"] == config["sources"] + ["sklearn_digits (own)"]
    assert len(metrics["final_weights"]) == 3


@pytest.mark.parametrize("change, message", [
    ({"k": 0}, "k must be at least 1"),
    ({"k": 9}, r"k must be between 1 and \d"),  # the admitted candidates (the gate may pass over some)
    ({"sources": "nope,textures", "k": None}, "no expert for source"),
    ({"sources": "sklearn_digits,textures", "k": None}, "cannot be one of its own sources"),
    ({"weights": "0.5,-0.5"}, "non-negative"),
    ({"weights": "0.2,0.3,0.5"}, "3 weights for 2 sources"),
    ({"weights": "x,y"}, "comma-separated numbers"),
    ({"method": "prompt"}, "has no prompt experts"),
    ({"target": "no_such_task"}, "unknown task"),
])
def test_bad_input_is_refused_before_training(quick_study, change, message):
    with pytest.raises(ValueError, match=message):
        prepare(cfg(quick_study, **change))


def test_shots_none_is_full_data_and_a_missing_shots_the_default():
    """``--shots full`` and the dashboard's "full" reach the run as ``"shots": None``: full data (it was
    merged over DEFAULTS into 16 shots); a config without shots gets the spec's default. On the shipped
    study (no training: prepare_transfer only resolves and validates)."""
    from pitune_core.spec.vocab import DEFAULT_SHOTS

    config = {"target": "textures", "k": 2, "study": "precomputed", "seed": 0}
    assert prepare({**config, "shots": None})["shots"] is None
    assert prepare({**config, "shots": "full"})["shots"] is None
    assert prepare(config)["shots"] == DEFAULT_SHOTS
    assert prepare({**config, "shots": 4})["shots"] == 4


def test_cli_reports_errors_without_traceback(quick_study, tmp_path, capsys):
    from pitune_core.study.sources import load_sources

    n = len(load_sources(quick_study, "lora").ranked("sklearn_digits"))  # the experts the gate admits
    assert main(["transfer", "sklearn_digits", "--k", "50", "--study", str(quick_study),
                 "--out", str(tmp_path / "r")]) == 2
    assert f"k must be between 1 and {n}" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_run_that_fails_half_way_is_marked_failed(quick_study, tmp_path):
    out = tmp_path / "crash"

    def crash(p):
        if p.get("step") == 2:
            raise RuntimeError("disk full (simulated)")

    with pytest.raises(RuntimeError):
        c = cfg(quick_study)
        run_transfer(c, load_sources(c["study"], "lora"), out, on_step=crash)
    assert (out / "FAILED").read_text().startswith("RuntimeError: disk full")
    assert "Traceback" in (out / "error.txt").read_text()
    assert not (out / "metrics.json").exists() and not (out / "expert").exists()


def test_compare_writes_results_csv(quick_study, tmp_path):
    out = tmp_path / "cmp"
    assert main(["compare", "sklearn_digits", "--k", "2", "--shots", "2", "--seeds", "0", "--study", str(quick_study),
                 "--approaches", "uniform-avg", "best-single", "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["approach"] for r in rows] == ["uniform-avg", "best-single"]
    assert set(rows[0]) >= {"target", "approach", "shots", "seed", "accuracy"}


def test_compare_refuses_unknown_approach(quick_study, capsys):
    assert main(["compare", "sklearn_digits", "--study", str(quick_study), "--approaches", "magic"]) == 2
    assert "unknown approach" in capsys.readouterr().err
