"""The command line in everyday use (issue 32, points 7 and 8): progress bars that move, one per
named stage with that stage's own counts, and ``pitune transfer`` runs recorded in the run registry
by default (``--no-record`` / ``--out`` opt out), so the dashboard lists them.

The training is replaced by a fake that reports progress as the real run does (own expert steps,
then tuning steps), so these tests train nothing; the shipped study gives real task names.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from pitune_core.cli.main import main

REPO = Path(__file__).resolve().parent.parent
STUDY = REPO / "precomputed"
needs_study = pytest.mark.skipif(not (STUDY / "manifest.json").is_file(), reason="no shipped study")


def _events(own: int = 4, tune: int = 6) -> list[dict]:
    """The progress a few-shot run reports (stage names as pitune_core.tune.baselines spells them)."""
    DATA_STAGE = "data: loaded (a task's first use downloads its archive and extracts its features)"
    OWN_EXPERT_STAGE, OWN_FISHER_STAGE = "own expert: trained on the run's data", "own Fisher: on the run's data"
    return ([{"stage": DATA_STAGE}]
            + [{"stage": OWN_EXPERT_STAGE, "step": i, "total": own, "loss": 1.0 / i} for i in range(1, own + 1)]
            + [{"stage": OWN_FISHER_STAGE, "step": 0, "total": 8}, {"stage": OWN_FISHER_STAGE, "step": 8, "total": 8}]
            + [{"stage": "train", "step": i, "total": tune, "loss": 0.5} for i in range(1, tune + 1)]
            + [{"stage": "save"}])


def test_stage_bars_give_each_stage_its_own_bar_and_counts(monkeypatch):
    from pitune_core.common import StageBars
    from pitune_core.tune.baselines import OWN_EXPERT_STAGE, OWN_FISHER_STAGE

    monkeypatch.setenv("PITUNE_QUIET", "0")
    out = io.StringIO()
    bars = StageBars("π-tuning t", file=out)
    for p in _events():
        bars(p)
    bars.close()
    text = out.getvalue()
    assert bars.stages[1:4] == [OWN_EXPERT_STAGE, OWN_FISHER_STAGE, "train"]
    final = {}  # the last state each bar printed
    for line in re.split(r"[\r\n]", text):
        m = re.match(r"π-tuning t: (.*?):\s+\d+%\|.*\| (\d+)/(\d+)", line)
        if m:
            final[m.group(1)] = (int(m.group(2)), int(m.group(3)))
    assert final[OWN_EXPERT_STAGE] == (4, 4) and final["tune"] == (6, 6) and final[OWN_FISHER_STAGE] == (8, 8)


def _fake_run(seen: dict):
    def run_transfer(config, sources, out, on_step=None):
        for p in _events():
            if on_step:
                on_step(p)
        seen["out"] = Path(out)
        return {"target": config["target"], "accuracy": 0.625, "test": {"accuracy": 0.625, "macro_f1": 0.6},
                "sources": config["sources"], "steps": 6}
    return run_transfer


def _names() -> tuple[str, list[str]]:
    from pitune_core.study.read.reader import Study

    have = Study(STUDY).expert_tasks("lora")
    return have[0], have[1:3]


@needs_study
def test_transfer_is_recorded_in_the_registry_by_default(tmp_path, monkeypatch, capsys):
    from pitune_core.runs.registry import RunRegistry
    from pitune_core.study.read.reader import filter_runs_for
    from pitune_core.tune import run

    seen: dict = {}
    monkeypatch.setattr(run, "run_transfer", _fake_run(seen))
    monkeypatch.setenv("PITUNE_QUIET", "0")
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "reg" / "registry.sqlite"
    target, sources = _names()
    assert main(["transfer", target, "--sources", ",".join(sources), "--shots", "4", "--db", str(db)]) == 0
    err = capsys.readouterr().err
    runs = filter_runs_for(RunRegistry(db).list_runs(kind="transfer"), target)  # what the dashboard lists
    assert len(runs) == 1 and runs[0].status == "succeeded" and runs[0].metrics["accuracy"] == 0.625
    assert seen["out"] == runs[0].run_dir and runs[0].config["shots"] == 4
    assert f"run {runs[0].id} recorded in {db}" in err
    assert "6/6" in err and "4/4" in err  # the tuning bar and the own expert's bar both reached their ends
    assert not (tmp_path / "runs" / "transfer").exists()


@needs_study
@pytest.mark.parametrize("flag", [["--no-record"], ["--out", "OUT"]])
def test_transfer_opts_out_of_the_registry(flag, tmp_path, monkeypatch, capsys):
    from pitune_core.tune import run

    seen: dict = {}
    monkeypatch.setattr(run, "run_transfer", _fake_run(seen))
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "reg" / "registry.sqlite"
    target, sources = _names()
    flag = [str(tmp_path / "out") if f == "OUT" else f for f in flag]
    assert main(["transfer", target, "--sources", ",".join(sources), "--shots", "4", "--db", str(db), *flag]) == 0
    assert not db.exists()
    assert json.loads(capsys.readouterr().out)["accuracy"] == 0.625
    where = seen["out"].resolve()
    assert where.parent == tmp_path / "runs" / "transfer" if flag == ["--no-record"] else where == tmp_path / "out"


@needs_study
@pytest.mark.slow
def test_a_placement_reports_its_own_experts_steps(tmp_path, monkeypatch):
    """place_task reports the own expert's every step with its total (the CLI's bar sat at 1/15
    through every stage: one report before training, none during it), then the own Fisher with its
    count. The predictor graphs' extra placement is left out here (its source side is point 1's)."""
    from pitune_core.data import user_tasks as U
    from pitune_core.study import place
    from pitune_core.tune.baselines import OWN_EXPERT_STAGE, OWN_FISHER_STAGE

    monkeypatch.setenv("PITUNE_TASKS", str(tmp_path / "tasks"))
    monkeypatch.setattr(place, "_predictor_graphs", lambda study, cfg: [])
    csv = "text,label\n" + "".join(f"sunny day number {i},sunny\nrainy day number {i},rainy\n" for i in range(12))
    U.save_task(U.draft_text_task("my_weather", csv.encode(), "w.csv"))
    seen: list[dict] = []
    place.place_task("my_weather", STUDY, place.PlaceConfig(shots=4, max_steps=3), on_progress=seen.append)
    own = [(p["step"], p["total"]) for p in seen if p.get("stage") == OWN_EXPERT_STAGE]
    assert own == [(1, 3), (2, 3), (3, 3)]
    assert [(p["step"], p["total"]) for p in seen if p.get("stage") == OWN_FISHER_STAGE] == [(0, 8), (8, 8)]
