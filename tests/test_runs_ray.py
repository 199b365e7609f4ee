"""Ray executor: same results as the local executor, failures, crashes, cancel.

One local Ray session (num_cpus=2, no dashboard) is shared by the whole module.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import jobkinds  # noqa: F401  (registers the test-only kinds; Ray tasks get its name as an argument)
import pytest

from pitune_core.runs.executor import run_until_idle
from pitune_core.runs.registry import RunRegistry

TIMEOUT = 90
STUDY = [{"seed": s, "lr": lr, "epochs": 40} for s, lr in [(0, 0.5), (1, 0.5), (2, 0.1), (3, 1.0)]]


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    from pitune_core.runs.ray_executor import init_ray

    started = init_ray(num_cpus=2, log_to_driver=False)
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


@pytest.fixture
def executor(ray_session, tmp_path):
    from pitune_core.runs.ray_executor import RayExecutor

    registry = RunRegistry(tmp_path / "ray.sqlite")
    ex = RayExecutor(registry)  # reuses the module's Ray session
    assert not ex._owns_ray
    yield ex
    ex.shutdown()
    registry.close()


def _until(pred, timeout=TIMEOUT, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_study_gives_identical_metrics_local_and_ray(executor, tmp_path):
    local = RunRegistry(tmp_path / "local.sqlite")
    local_ids = [local.submit("toy-train", cfg, name=f"pair {i}") for i, cfg in enumerate(STUDY)]
    run_until_idle(local, max_parallel=2, timeout=TIMEOUT, poll_interval=0.05)

    ray_ids = executor.map("toy-train", STUDY, names=[f"pair {i}" for i in range(len(STUDY))])
    ray_recs = executor.wait(ray_ids, timeout=TIMEOUT)

    local_metrics = [local.get(i).metrics for i in local_ids]
    ray_metrics = [ray_recs[i].metrics for i in ray_ids]
    assert all(r.status == "succeeded" for r in ray_recs.values())
    assert all(local.get(i).status == "succeeded" for i in local_ids)
    assert ray_metrics == local_metrics  # bit-identical floats
    assert len({m["final_loss"] for m in ray_metrics}) == len(STUDY)  # and not trivially equal
    for rec in ray_recs.values():
        assert rec.executor == "ray" and rec.attempt == 1
        assert rec.worker_pid != os.getpid()
        assert rec.progress["step"] == rec.progress["total"] == 40
        assert (rec.run_dir / "metrics.json").exists()
        assert "kind=toy-train" in rec.log_path.read_text()


def test_ray_failures_and_crashes_are_recorded(executor):
    reg = executor.registry
    bad = executor.submit("fail", {"steps": 1, "message": "ray boom"})
    victim = executor.submit("sleep", {"steps": 400, "seconds_per_step": 0.05})
    _until(lambda: (reg.get(victim).progress.get("step") or 0) >= 1, what="victim to start")
    os.kill(reg.get(victim).worker_pid, signal.SIGKILL)
    good = executor.submit("sleep", {"steps": 3, "seconds_per_step": 0.02})
    recs = executor.wait([bad, victim, good], timeout=TIMEOUT)
    assert recs[good].status == "succeeded"
    assert recs[bad].status == "failed" and recs[bad].error == "RuntimeError: ray boom"
    assert "Traceback" in recs[bad].log_path.read_text()
    assert (recs[bad].run_dir / "FAILED").exists()
    assert recs[victim].status == "failed" and "WorkerCrashedError" in recs[victim].error
    assert "[ray]" in recs[victim].log_path.read_text() and (recs[victim].run_dir / "FAILED").exists()
    assert reg.integrity_check() == "ok"


def test_ray_cancel_running_and_queued(executor):
    reg = executor.registry
    # each run asks for both CPUs, so the second one waits in Ray's queue
    running = executor.submit("sleep", {"steps": 400, "seconds_per_step": 0.05}, resources={"num_cpus": 2})
    waiting = executor.submit("sleep", {"steps": 1}, resources={"num_cpus": 2})
    _until(lambda: (reg.get(running).progress.get("step") or 0) >= 1, what="run to start")
    assert reg.get(waiting).status == "queued"  # claimed only when Ray starts the task
    assert executor.cancel(waiting).status == "cancelled"
    executor.cancel(running)
    recs = executor.wait([running, waiting], timeout=TIMEOUT)
    assert recs[running].status == "cancelled" and recs[running].progress["step"] < 400
    assert recs[waiting].status == "cancelled" and recs[waiting].started_at is None


def test_ray_resume_of_a_failed_run(executor):
    reg = executor.registry
    run_id = executor.submit("fail", {"message": "first attempt"})
    assert executor.wait([run_id], timeout=TIMEOUT)[run_id].status == "failed"
    executor.resume(run_id)
    rec = executor.wait([run_id], timeout=TIMEOUT)[run_id]
    assert rec.status == "failed" and rec.attempt == 2
    assert (rec.run_dir / "attempt-1" / "error.txt").read_text().startswith("Traceback")
    assert (rec.run_dir / "FAILED").exists() and (rec.run_dir / "attempt-1" / "FAILED").exists()
    assert reg.get(run_id).executor == "ray"


def test_ray_hostile_row_imports_nothing(executor):
    """A Ray task resolves the kind from the modules its driver named, never from the row."""
    reg = executor.registry
    run_id = reg.submit("noop", {}, executor="ray")
    with reg._write() as conn:
        conn.execute("UPDATE runs SET kind = 'evil', target = 'this:s' WHERE id = ?", (run_id,))
    executor.launch(run_id)
    rec = executor.wait([run_id], timeout=TIMEOUT)[run_id]
    assert rec.status == "failed" and rec.error.startswith("unknown job kind 'evil'")
    assert "Beautiful is better than ugly" not in rec.log_path.read_text()
    from pitune_core.runs.jobs import worker_job_modules

    assert worker_job_modules()[:2] == ["pitune_core.jobs", "jobkinds"]  # what the task was told to import


def test_missing_ray_gives_install_hint(monkeypatch, tmp_path):
    from pitune_core.runs import ray_executor

    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` raise ImportError
    with pytest.raises(ray_executor.RayNotInstalledError, match=r"pip install 'ray\[default\]==2\.60\.0'"):
        ray_executor.RayExecutor(RunRegistry(tmp_path / "x.sqlite"))


def test_ray_cancel_of_a_job_ignoring_it_interrupts_the_task(ray_session, tmp_path):
    from pitune_core.runs.ray_executor import RayExecutor

    reg = RunRegistry(tmp_path / "ray-force.sqlite")
    ex = RayExecutor(reg, cancel_grace=0.2, kill_grace=2.0)
    try:
        run_id = ex.submit("sleep", {"steps": 400, "seconds_per_step": 0.05, "ignore_cancel": True})
        _until(lambda: (reg.get(run_id).progress.get("step") or 0) >= 1, what="run to start")
        ex.cancel(run_id)
        t0 = time.time()
        rec = ex.wait([run_id], timeout=TIMEOUT)[run_id]
        assert rec.status == "cancelled" and time.time() - t0 < 10
        assert "ray.cancel()" in rec.log_path.read_text()
        ok = ex.submit("noop", {})  # the Ray pool still works afterwards
        assert ex.wait([ok], timeout=TIMEOUT)[ok].status == "succeeded"
    finally:
        ex.shutdown()
