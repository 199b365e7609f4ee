"""A run directory holds one attempt, and says what happened to it.

`pitune transfer --out DIR` over an earlier run moves that run's files into `DIR/attempt-<n>/` first;
`run_transfer` refuses a directory that still holds a run; a stopped run (Ctrl-C, a registry cancel)
is marked INTERRUPTED, never FAILED with a traceback.
"""

from __future__ import annotations

import json

import pytest

from pitune_core.cli.transfer import _fresh_run_dir
from pitune_core.runs.jobs import RunCancelled
from pitune_core.tune import run as tune_run

OLD = {"config.json": '{"target": "old"}', "weights.json": "{}", "metrics.json": '{"accuracy": 0.9}'}


def _old_run(d):
    d.mkdir(parents=True, exist_ok=True)
    for name, text in OLD.items():
        (d / name).write_text(text)
    (d / tune_run.RUN_MARKER).write_text("{}")  # what run_transfer writes first
    (d / "expert").mkdir()
    (d / "expert" / "adapter_model.safetensors").write_bytes(b"weights")


def _tree(d):
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


def test_run_transfer_refuses_a_directory_holding_a_run(tmp_path, monkeypatch):
    d = tmp_path / "out"
    _old_run(d)
    before = _tree(d)
    called = []
    monkeypatch.setattr(tune_run, "prepare_transfer", lambda *a, **k: called.append(1))
    with pytest.raises(ValueError, match=r"already holds a run \(expert, metrics.json, weights.json\)"):
        tune_run.run_transfer({"target": "x"}, None, d)
    assert _tree(d) == before and not called  # refused before anything ran or was written
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        tune_run.run_transfer({"target": "x"}, None, f)


@pytest.mark.parametrize("stop", [KeyboardInterrupt(), RunCancelled("run 20261127-000000-abcdef was cancelled")])
def test_interrupting_out_over_a_finished_run(tmp_path, monkeypatch, stop):
    """The issue's case: `transfer --out DIR` over a finished run, interrupted. The old run is kept whole
    in attempt-1/; DIR holds only the new attempt, marked INTERRUPTED (no FAILED, no traceback)."""
    d = tmp_path / "out"
    _old_run(d)

    def stopped(config, sources):
        raise stop

    monkeypatch.setattr(tune_run, "prepare_transfer", stopped)
    out = _fresh_run_dir(str(d), "rt_polarity")
    assert out == d
    with pytest.raises(type(stop)):
        tune_run.run_transfer({"target": "rt_polarity"}, None, out)
    assert _tree(d) == [".pitune-run", "INTERRUPTED", "attempt-1", "attempt-1/.pitune-run", "attempt-1/config.json",
                        "attempt-1/expert",
                        "attempt-1/expert/adapter_model.safetensors", "attempt-1/metrics.json",
                        "attempt-1/weights.json"]
    assert json.loads((d / "attempt-1" / "metrics.json").read_text()) == {"accuracy": 0.9}  # nothing lost
    assert (d / "INTERRUPTED").read_text().startswith(type(stop).__name__)
    # a third attempt moves the second aside too, under the next number
    assert _fresh_run_dir(str(d), "rt_polarity") == d
    assert _tree(d) == [p for p in _tree(d) if p.startswith("attempt-")] and (d / "attempt-2" / "INTERRUPTED").exists()


def test_a_real_failure_is_still_failed(tmp_path, monkeypatch):
    def broken(config, sources):
        raise RuntimeError("no space left (simulated)")

    monkeypatch.setattr(tune_run, "prepare_transfer", broken)
    with pytest.raises(RuntimeError):
        tune_run.run_transfer({"target": "x"}, None, tmp_path / "r")
    assert (tmp_path / "r" / "FAILED").read_text().startswith("RuntimeError: no space left")
    assert "Traceback" in (tmp_path / "r" / "error.txt").read_text()
    assert not (tmp_path / "r" / "INTERRUPTED").exists()


def test_default_out_is_always_a_new_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = _fresh_run_dir(None, "rt_polarity")
    _old_run(first)
    second = _fresh_run_dir(None, "rt_polarity")
    assert second != first and not second.exists() and second.parent == first.parent
    with pytest.raises(ValueError, match="is a file"):
        (tmp_path / "f").write_text("x")
        _fresh_run_dir(str(tmp_path / "f"), "rt_polarity")


def test_cli_out_over_a_finished_run_interrupted_for_real(quick_study, tmp_path, monkeypatch, capsys):
    """End to end on a real quick study: a finished run, then Ctrl-C half-way through a second one
    with the same --out."""
    from pitune_core.cli import transfer as cli_transfer
    from pitune_core.cli.main import main

    out = tmp_path / "run"
    argv = ["transfer", "sklearn_digits", "--k", "2", "--shots", "2", "--study", str(quick_study), "--out", str(out)]
    assert main(argv) == 0
    first = json.loads((out / "metrics.json").read_text())

    class CtrlC:
        def __init__(self, *a, **k):
            pass

        def __call__(self, p):
            if p.get("stage") == "train" and p.get("step") == 2:  # tuning, after the own expert
                raise KeyboardInterrupt

        def close(self):
            pass

    monkeypatch.setattr(cli_transfer, "StageBars", CtrlC)
    assert main(argv) == 130
    names = sorted(p.name for p in out.iterdir())
    # no FAILED, no old metrics beside it; the own expert (trained on the shots before tuning began) is complete
    assert names == [".pitune-run", "INTERRUPTED", "attempt-1", "config.json", "own"], names
    assert (out / "own" / "adapter_model.safetensors").exists() and (out / "attempt-1" / "own").is_dir()
    assert json.loads((out / "attempt-1" / "metrics.json").read_text()) == first
    assert (out / "attempt-1" / "expert" / "adapter_model.safetensors").exists()
    assert "moved its files to" in capsys.readouterr().err
