"""``--workers``: a shardable command run in worker processes (pitune_core/cli/workers.py)."""

from __future__ import annotations

import pytest

from pitune_core.cli import workers


def test_auto_is_one_single_thread_worker_per_core_on_cpu_and_one_on_cuda(monkeypatch):
    monkeypatch.delenv("PITUNE_SHARD", raising=False)
    gib = 1024 ** 3
    assert workers.auto_workers(cores=8, available_memory=64 * gib, cuda=False) == 8
    assert workers.auto_workers(cores=8, available_memory=5 * gib, cuda=False) == 5 * gib // workers.WORKER_MEMORY
    assert workers.auto_workers(cores=8, available_memory=gib // 2, cuda=False) == 1  # never 0
    assert workers.auto_workers(cores=8, available_memory=64 * gib, cuda=True) == 1
    monkeypatch.setenv("PITUNE_SHARD", "0/2")  # sharded by hand: no workers inside a shard
    assert workers.auto_workers(cores=8, available_memory=64 * gib, cuda=False) == 1
    assert workers.threads_per_worker(2, cores=2) == 1 and workers.threads_per_worker(1, cores=2) == 2
    assert workers.threads_per_worker(3, cores=2) == 1


def test_resolve_reads_the_option_then_the_environment_and_refuses_nonsense(monkeypatch):
    monkeypatch.delenv("PITUNE_SHARD", raising=False)
    monkeypatch.setenv(workers.ENV, "3")
    assert workers.resolve(None) == 3 and workers.resolve("2") == 2
    for bad in ("0", "-1", "two", "1.5"):
        with pytest.raises(ValueError, match="expected a whole number >= 1 or 'auto'"):
            workers.resolve(bad)
    monkeypatch.setenv("PITUNE_SHARD", "1/2")
    with pytest.raises(ValueError, match="not both"):
        workers.resolve("2")
    assert workers.resolve("auto") == 1 and workers.resolve("1") == 1


def test_with_option_replaces_every_spelling():
    argv = ["transfer-study", "p.json", "--stage", "all", "--workers=4", "--out", "o", "--workers", "2"]
    assert workers.with_option(argv, "--workers", "1") == ["transfer-study", "p.json", "--stage", "all", "--out", "o",
                                                           "--workers", "1"]
    assert workers.with_option(argv, "--stage", None)[:3] == ["transfer-study", "p.json", "--workers=4"]


def test_a_transfer_study_in_two_workers_logs_every_pair_once_as_one_process_does(quick_study, tmp_path, capfd):
    """Two real worker processes share the pairs (each its PITUNE_SHARD half), the command then finishes
    in this process (quality), and the log holds exactly the pairs, with the scores, of a one-process run."""
    import json

    from pitune_core.cli.main import main
    from pitune_core.study.transfer import load_plan, pair_jobs, read_jsonl
    from tests.test_predictors import _plan

    path = _plan(tmp_path, targets=["sklearn_digits"], predictors=["same_modality"])
    plan = load_plan(path)
    base = ["transfer-study", str(path), "--study", str(quick_study), "--projector", str(quick_study / "backbone")]
    assert main([*base, "--out", str(tmp_path / "two"), "--workers", "2"]) == 0  # each worker prints its stage
    err = capfd.readouterr().err
    assert "pairs stage: 2 workers" in err and "predictors stage: 2 workers" in err
    for i in (1, 2):  # both ran each stage, and their output came back
        assert f'[worker {i}/2] {{"out": ' in err and err.count(f"[worker {i}/2]") == 2
    two = read_jsonl(tmp_path / "two" / "pairs.jsonl")
    assert sorted((r["target"], r["source"], r["seed"]) for r in two) == sorted(pair_jobs(plan.tasks, plan.seeds,
                                                                                          plan.targets))
    assert json.loads((tmp_path / "two" / "quality.json").read_text())["reliability"]["n_seeds"] == 2
    assert main([*base, "--out", str(tmp_path / "one"), "--workers", "1"]) == 0
    one = {(r["target"], r["source"], r["seed"]): r["score"] for r in read_jsonl(tmp_path / "one" / "pairs.jsonl")}
    assert {(r["target"], r["source"], r["seed"]): r["score"] for r in two} == pytest.approx(one, abs=1e-9)


def test_a_failing_worker_is_named_in_one_line_and_the_others_finish(quick_study, tmp_path, capsys):
    from pitune_core.cli.main import main
    from tests.test_predictors import _plan

    path = _plan(tmp_path, targets=["sklearn_digits"], predictors=[])
    code = main(["transfer-study", str(path), "--study", str(quick_study), "--projector",
                 str(tmp_path / "no-such-backbone"), "--out", str(tmp_path / "o"), "--stage", "pairs",
                 "--workers", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "worker 1/2 of `pitune transfer-study" in err and "1 more failed" in err
    assert "rerun to resume" in err and "Traceback" not in err.splitlines()[-1]


def test_study_run_refuses_workers_with_limit_or_sample(capsys, tmp_path, monkeypatch):
    """``--limit`` and ``--sample`` count the runs of one process: with N workers they would mean N times as many."""
    from pitune_core.cli.main import main

    monkeypatch.delenv("PITUNE_SHARD", raising=False)
    for extra in (["--limit", "1"], ["--sample"]):
        code = main(["study", "run", "--plan", "plans/quick/few-shot.json", "--study", "precomputed", "--out",
                     str(tmp_path / "o"), "--workers", "2", *extra])
        assert code == 2 and "count the runs of one process: drop --workers" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_a_protocol_plan_in_two_workers_runs_every_planned_row_once_and_writes_the_results(quick_study, tmp_path,
                                                                                            capfd):
    """``pitune study run --workers 2``: the workers share the plan's jobs, then this process resumes (nothing
    left to run) and writes results.csv with every planned row done, as a one-process run does."""
    import csv
    import json

    from pitune_core.cli.main import main
    from pitune_core.study.protocol import load_plan

    plan = load_plan("plans/quick/few-shot.json")
    out = tmp_path / "o"
    assert main(["study", "run", "--plan", "plans/quick/few-shot.json", "--study", str(quick_study), "--out",
                 str(out), "--workers", "2"]) == 0
    captured = capfd.readouterr()
    assert "plan quick-few-shot: 2 workers" in captured.err
    for i in (1, 2):
        assert f"[worker {i}/2] [" in captured.err  # each worker's per-run lines came back
    assert json.loads(captured.out)["ran"] == 0  # this process found every job done by the workers
    runs = [json.loads(x) for x in (out / "runs.jsonl").read_text().splitlines()]
    assert len(runs) == len(plan.jobs()) and len({r["key"] for r in runs}) == len(runs)
    assert all(r["status"] == "done" and r["threads"] == 1 for r in runs)
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(plan.jobs()) and {r["status"] for r in rows} == {"done"}


def test_num_threads_has_one_parser_that_refuses_nonsense_in_one_line(monkeypatch, capsys, tmp_path):
    """``PITUNE_NUM_THREADS``: one owner (pitune_core.common) for the name and its parsing, used by the
    CLI's torch threads, the run registry's workers and ``--workers``' environments."""
    from pitune_core.cli.main import main
    from pitune_core.common import NUM_THREADS_ENV, num_threads_from_env
    from pitune_core.runs.worker import _threads_for

    assert num_threads_from_env({}) is None and num_threads_from_env({NUM_THREADS_ENV: " "}) is None
    assert num_threads_from_env({NUM_THREADS_ENV: "3"}) == 3
    for bad in ("abc", "0", "-2", "1.5"):
        with pytest.raises(ValueError, match="PITUNE_NUM_THREADS must be a whole number >= 1"):
            num_threads_from_env({NUM_THREADS_ENV: bad})
    assert workers.worker_env(0, 2, base={})[NUM_THREADS_ENV] == str(workers.threads_per_worker(2))
    monkeypatch.setenv(NUM_THREADS_ENV, "2")
    assert _threads_for({"num_cpus": 4}, None) == 2 and _threads_for({}, 5) == 5
    monkeypatch.setenv(NUM_THREADS_ENV, "two")
    code = main(["transfer-study", "plans/quick/transfer.json", "--study", str(tmp_path / "s"), "--stage", "pairs"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "PITUNE_NUM_THREADS must be a whole number >= 1" in err, err


def test_shard_has_one_parser_that_refuses_nonsense_in_one_line(monkeypatch, capsys, tmp_path):
    """``PITUNE_SHARD=i/n``: a value that is not two whole numbers with 0 <= i < n is refused with
    one line naming the variable (it was Python's bare ``int()`` error for ``abc/2``)."""
    from pitune_core.cli.main import main
    from pitune_core.study.transfer import SHARD_ENV, shard_from_env, take_shard

    monkeypatch.delenv(SHARD_ENV, raising=False)
    assert shard_from_env() is None and take_shard([1, 2, 3]) == [1, 2, 3]
    monkeypatch.setenv(SHARD_ENV, "1/2")
    assert shard_from_env() == (1, 2) and take_shard([0, 1, 2, 3]) == [1, 3]
    for bad in ("abc/2", "2/2", "-1/2", "1", "1/2/3", "0/0", "1.0/2", "/"):
        monkeypatch.setenv(SHARD_ENV, bad)
        with pytest.raises(ValueError, match="PITUNE_SHARD=.*expected i/n, whole numbers with 0 <= i < n"):
            shard_from_env()
    monkeypatch.setenv(SHARD_ENV, "abc/2")
    code = main(["transfer-study", "plans/quick/transfer.json", "--study", str(tmp_path / "s"), "--stage", "pairs"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "PITUNE_SHARD='abc/2': expected i/n" in err, err
