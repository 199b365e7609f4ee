"""A small real pairwise transfer study, in-process, through the local executor and through Ray."""

import json

import pytest

from pitune_core.study.transfer import TransferBudget, run_pairs, run_pairs_on

TASKS = ["sklearn_digits", "textures"]
BUDGET = TransferBudget(shots=2, steps=3, seeds=(0,), eval_limit=60)


def _scores(log):
    return {(r["target"], r["source"], r["seed"]): r["score"] for r in map(json.loads, log.read_text().splitlines())}


@pytest.fixture(scope="module")
def reference(quick_study, backbone_of_study, tmp_path_factory):
    dirs = {t: quick_study / "experts/lora" / t for t in TASKS}
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the executors run every pair with one thread
    try:
        log = run_pairs(TASKS, dirs, "lora", backbone_of_study, BUDGET, tmp_path_factory.mktemp("inproc"))
    finally:
        torch.set_num_threads(threads)
    return dirs, _scores(log)


def test_every_pair_says_where_it_ran(reference, quick_study, backbone_of_study, tmp_path):
    """Ground-truth rows name the device and torch build (a study may mix a CPU and a GPU session)."""
    from pitune_core.model.device import describe_device
    from pitune_core.study.transfer import read_jsonl

    dirs, _ = reference
    log = run_pairs(TASKS, dirs, "lora", backbone_of_study, BUDGET, tmp_path, targets=TASKS[:1])
    where = {r["device"] for r in read_jsonl(log)}
    assert where == {describe_device(backbone_of_study.device)} and "torch" in where.pop()


def test_local_executor_gives_the_same_study(quick_study, reference, tmp_path):
    dirs, expected = reference
    log = run_pairs_on("local", TASKS, dirs, "lora", BUDGET, tmp_path / "t", quick_study / "backbone",
                       tmp_path / "reg.sqlite", max_parallel=2)
    assert _scores(log) == expected and len(expected) == 4


def test_ray_gives_the_same_study(quick_study, reference, tmp_path):
    pytest.importorskip("ray")
    dirs, expected = reference
    log = run_pairs_on("ray", TASKS, dirs, "lora", BUDGET, tmp_path / "t", quick_study / "backbone",
                       tmp_path / "reg.sqlite", max_parallel=2)
    assert _scores(log) == expected
    from pitune_core.runs.registry import RunRegistry

    runs = RunRegistry(tmp_path / "reg.sqlite").list_runs(kind=["transfer-pair"])
    assert len(runs) == 4 and {r.status for r in runs} == {"succeeded"}


def test_resuming_under_another_budget_is_refused(tmp_path):
    out = tmp_path / "t"
    out.mkdir()
    (out / "budget.json").write_text(json.dumps({"method": "lora", "shots": 8, "steps": 25, "batch_size": 16,
                                                 "eval_limit": 200}))
    (out / "pairs.jsonl").write_text(json.dumps({"target": "a", "source": "b", "seed": 0, "score": 0.5}) + "\n")
    dirs = {t: tmp_path / t for t in TASKS}
    with pytest.raises(ValueError, match="different budget.*shots=8"):
        run_pairs(TASKS, dirs, "lora", None, BUDGET, out)
    assert len((out / "pairs.jsonl").read_text().splitlines()) == 1  # nothing lost
