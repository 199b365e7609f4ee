"""Local executor: worker processes, failures, cancel, SIGKILL, restart recovery."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import jobkinds  # noqa: F401  (registers the test-only kinds; its name reaches the workers on their command line)
import pytest

from pitune_core.runs.executor import (
    LocalScheduler,
    available_cpus,
    ensure_scheduler,
    run_until_idle,
    scheduler_running,
    wait,
)
from pitune_core.runs.jobs import unregister_job
from pitune_core.runs.registry import RunRegistry, pid_alive

TIMEOUT = 60


@pytest.fixture
def registry(tmp_path):
    reg = RunRegistry(tmp_path / "registry.sqlite")
    yield reg
    reg.close()


def _until(pred, timeout=TIMEOUT, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _started(registry, run_id, min_step=1):
    rec = registry.get(run_id)
    return rec.status == "running" and (rec.progress.get("step") or 0) >= min_step and rec.worker_pid != os.getpid()


@pytest.fixture
def scheduler(registry):
    """A scheduler running in a background thread of the test process (workers are subprocesses)."""
    sched = LocalScheduler(registry, max_parallel=2, poll_interval=0.05, cancel_grace=0.5, kill_grace=1.0)
    sched.start()
    yield sched
    sched.stop(terminate_workers=True)


def test_two_runs_submitted_together_both_finish(registry):
    # 3 s each: long enough to overlap even when worker start-up is slow on a loaded machine
    a = registry.submit("sleep", {"steps": 15, "seconds_per_step": 0.2}, name="a")
    b = registry.submit("sleep", {"steps": 15, "seconds_per_step": 0.2}, name="b")
    run_until_idle(registry, max_parallel=2, timeout=TIMEOUT, poll_interval=0.05)
    ra, rb = registry.get(a), registry.get(b)
    for r in (ra, rb):
        assert r.status == "succeeded", r.error
        assert r.metrics == {"steps": 15, "slept": 3.0}
        assert (r.run_dir / "metrics.json").exists()
        assert r.progress["step"] == 15 and r.progress["total"] == 15
        assert r.worker_pid and r.worker_pid != os.getpid()  # never in the caller's process
        assert f"run {r.id} kind=sleep" in r.log_path.read_text()
    assert ra.worker_pid != rb.worker_pid
    # max_parallel=2: they ran at the same time
    assert ra.started_at < rb.finished_at and rb.started_at < ra.finished_at


def test_max_parallel_one_runs_one_at_a_time_with_thread_caps(registry):
    ids = [registry.submit("noop", {}) for _ in range(3)]
    capped = registry.submit("noop", {}, resources={"num_cpus": 1})
    run_until_idle(registry, max_parallel=1, timeout=TIMEOUT, poll_interval=0.02)
    recs = sorted((registry.get(i) for i in [*ids, capped]), key=lambda r: r.started_at)
    assert all(r.status == "succeeded" for r in recs)
    for earlier, later in zip(recs, recs[1:]):
        assert earlier.finished_at <= later.started_at  # never overlapping
    expected = available_cpus()  # one worker may use every core
    assert registry.get(ids[0]).metrics["num_threads"] == expected
    assert registry.get(ids[0]).metrics["env"]["OMP_NUM_THREADS"] == str(expected)
    assert registry.get(capped).metrics["num_threads"] == 1
    assert registry.get(capped).metrics["env"]["OMP_NUM_THREADS"] == "1"


def test_failing_run_is_recorded_and_the_other_finishes(registry):
    bad = registry.submit("fail", {"steps": 2, "message": "boom in step 3"})
    good = registry.submit("sleep", {"steps": 3, "seconds_per_step": 0.05})
    run_until_idle(registry, max_parallel=2, timeout=TIMEOUT, poll_interval=0.05)
    rb, rg = registry.get(bad), registry.get(good)
    assert rg.status == "succeeded"
    assert rb.status == "failed" and rb.error == "RuntimeError: boom in step 3"
    log = rb.log_path.read_text()
    assert "Traceback (most recent call last)" in log and "fail_job" in log and "boom in step 3" in log
    assert "boom in step 3" in (rb.run_dir / "error.txt").read_text()
    assert (rb.run_dir / "FAILED").exists() and not (rb.run_dir / "metrics.json").exists()
    assert rb.progress["step"] == 2


def test_cancel_stops_a_running_run(registry, scheduler):
    # the job marks itself INTERRUPTED on the way out, as run_transfer does
    run_id = registry.submit("sleep", {"steps": 400, "seconds_per_step": 0.05, "mark_interrupted": True})
    _until(lambda: _started(registry, run_id), what="run to start")
    t0 = time.time()
    registry.request_cancel(run_id)
    rec = wait(registry, [run_id], timeout=TIMEOUT)[run_id]
    assert rec.status == "cancelled"
    assert time.time() - t0 < 5  # cooperative: well before the 20 s the job would take
    assert rec.progress["step"] < 400
    log = rec.log_path.read_text()
    assert "cancelled" in log and "Traceback" not in log
    # files and database agree: cancelled, no FAILED, no traceback, no stale INTERRUPTED
    assert sorted(p.name for p in rec.run_dir.iterdir()) == ["CANCELLED", "config.json", "log.txt"]
    assert (rec.run_dir / "CANCELLED").read_text().strip() == rec.error


def test_cancel_of_a_job_ignoring_it_terminates_the_worker(registry, scheduler):
    run_id = registry.submit("sleep", {"steps": 400, "seconds_per_step": 0.05, "ignore_cancel": True})
    _until(lambda: _started(registry, run_id), what="run to start")
    registry.request_cancel(run_id)
    rec = wait(registry, [run_id], timeout=TIMEOUT)[run_id]
    assert rec.status == "cancelled"
    log = rec.log_path.read_text()
    assert "ignored the cancel request" in log and "SIGTERM" in log
    # the worker recorded "cancelled" on its way out; it then exits (and is reaped)
    _until(lambda: not pid_alive(rec.worker_pid, rec.worker_start_ticks), timeout=10, what="worker to exit")


def test_cancel_of_a_queued_run_is_immediate(registry):
    run_id = registry.submit("sleep", {"steps": 1})
    assert registry.request_cancel(run_id).status == "cancelled"
    run_until_idle(registry, max_parallel=1, timeout=TIMEOUT)
    rec = registry.get(run_id)
    assert rec.status == "cancelled" and rec.started_at is None and rec.worker_pid is None


def test_sigkill_of_a_worker_leaves_the_registry_consistent(registry, scheduler):
    victim = registry.submit("sleep", {"steps": 400, "seconds_per_step": 0.05}, name="victim")
    other = registry.submit("sleep", {"steps": 8, "seconds_per_step": 0.05}, name="other")
    _until(lambda: _started(registry, victim) and _started(registry, other), what="both runs to start")
    os.kill(registry.get(victim).worker_pid, signal.SIGKILL)
    recs = wait(registry, [victim, other], timeout=TIMEOUT)
    assert recs[other].status == "succeeded" and recs[other].metrics["steps"] == 8
    v = recs[victim]
    assert v.status == "failed"
    assert v.error == "worker exited with signal 9 (SIGKILL)"
    log = v.log_path.read_text()
    assert f"==== run {victim}" in log and "signal 9" in log  # log kept, reason appended
    assert (v.run_dir / "FAILED").exists()
    assert registry.integrity_check() == "ok"
    # the scheduler keeps working after the crash
    again = registry.submit("noop", {})
    assert wait(registry, [again], timeout=TIMEOUT)[again].status == "succeeded"


def test_restart_recovery_marks_orphans_interrupted_and_resume_works(registry, tmp_path):
    # A detached scheduler runs a long job; then "the machine crashes": scheduler and worker die.
    proc = subprocess.Popen(
        [sys.executable, "-m", "pitune_core.runs.executor", "--db", str(registry.db_path), "--max-parallel", "1",
         "--idle-timeout", "30", "--jobs-module", "jobkinds"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        run_id = registry.submit("sleep", {"steps": 6, "seconds_per_step": 0.1})
        waiting = registry.submit("noop", {})
        _until(lambda: _started(registry, run_id), what="run to start")
        worker = registry.get(run_id).worker_pid
        assert _until(lambda: scheduler_running(registry.db_path), what="scheduler lock")
        proc.kill()
        os.kill(worker, signal.SIGKILL)
        proc.wait(TIMEOUT)
        _until(lambda: not pid_alive(worker), what="worker to die")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert registry.get(run_id).status == "running"  # nobody noticed yet
    assert not scheduler_running(registry.db_path)  # the kernel dropped the dead scheduler's lock

    sched = LocalScheduler(registry, max_parallel=1, poll_interval=0.05)
    sched.step()  # a restarted scheduler first recovers orphans
    rec = registry.get(run_id)
    assert rec.status == "interrupted" and "gone" in rec.error and rec.progress["step"] >= 1
    sched.run_until_idle(timeout=TIMEOUT)
    assert registry.get(waiting).status == "succeeded"  # the queue survived the crash

    registry.resume(run_id)
    sched.run_until_idle(timeout=TIMEOUT)
    rec = registry.get(run_id)
    assert rec.status == "succeeded" and rec.attempt == 2
    assert "resumed" in rec.log_path.read_text()


def test_stopping_the_scheduler_with_its_workers_interrupts_runs(registry):
    sched = LocalScheduler(registry, max_parallel=1, poll_interval=0.05).start()
    run_id = registry.submit("sleep", {"steps": 400, "seconds_per_step": 0.05})
    _until(lambda: _started(registry, run_id), what="run to start")
    sched.stop(terminate_workers=True)  # SIGTERM without a cancel request: resumable
    rec = registry.get(run_id)
    assert rec.status == "interrupted" and "signal 15" in rec.error
    registry.resume(run_id)
    assert registry.get(run_id).status == "queued"


def test_ensure_scheduler_starts_one_detached_scheduler(registry):
    pid = ensure_scheduler(registry.db_path, max_parallel=1, idle_timeout=1.0)
    try:
        assert pid and pid != os.getpid()
        _until(lambda: scheduler_running(registry.db_path), what="scheduler lock")
        assert ensure_scheduler(registry.db_path, max_parallel=1, idle_timeout=1.0) is None  # single instance
        run_id = registry.submit("toy-train", {"seed": 3, "epochs": 5})
        rec = wait(registry, [run_id], timeout=TIMEOUT)[run_id]
        assert rec.status == "succeeded" and rec.worker_pid not in (pid, os.getpid())
        info = registry.scheduler_info()
        assert info and info["pid"] == pid and info["alive"]
        _until(lambda: not scheduler_running(registry.db_path), what="idle scheduler to exit")
        _until(lambda: not pid_alive(pid), what="scheduler process to exit")
        assert registry.scheduler_info() is None
    finally:
        if pid and pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_registered_kind_runs_in_worker(registry, tmp_path, monkeypatch):
    """A kind registered by a module: the scheduler names the module on each worker's command line;
    the worker imports it (it registers the kind) and runs the job."""
    (tmp_path / "pitune_testjobs_mod.py").write_text(
        textwrap.dedent(
            """
            from pitune_core.runs.jobs import register_job

            def job(config, ctx):
                ctx.progress("custom", step=1, total=1, extra_info="hi")
                ctx.log("custom job ran")
                return {"double": config["x"] * 2, "run_id": ctx.run_id, "dir": str(ctx.run_dir)}

            register_job("custom-kind", job)
            """
        )
    )
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.syspath_prepend(str(tmp_path))
    import pitune_testjobs_mod  # noqa: F401  (registers custom-kind here)

    try:
        run_id = registry.submit("custom-kind", {"x": 21})
        run_until_idle(registry, max_parallel=1, timeout=TIMEOUT)
    finally:
        unregister_job("custom-kind")
    rec = registry.get(run_id)
    assert rec.status == "succeeded", rec.error
    assert rec.metrics == {"double": 42, "run_id": run_id, "dir": str(rec.run_dir)}
    assert rec.progress["extra_info"] == "hi"
    assert "custom job ran" in rec.log_path.read_text()


def test_bad_job_result_fails_cleanly(registry):
    run_id = registry.submit("bad-result", {})
    run_until_idle(registry, max_parallel=1, timeout=TIMEOUT)
    rec = registry.get(run_id)
    assert rec.status == "failed" and rec.error.startswith("TypeError: job returned list")


def _hostile(registry, kind, target):
    """A row as someone else's database may hold it: any kind, an import path in the old target column."""
    run_id = registry.submit("noop", {})
    with registry._write() as conn:
        conn.execute("UPDATE runs SET kind = ?, target = ? WHERE id = ?", (kind, target, run_id))
    return run_id


ZEN = "Beautiful is better than ugly"


def test_hostile_rows_import_nothing(registry):
    """The worker runs kinds registered in code only: a row's target is ignored, an unknown kind fails
    with one line, and nothing the row names is imported (``this`` prints the Zen of Python)."""
    evil = _hostile(registry, "this:s", "this:s")
    unknown = _hostile(registry, "evil", "this:s")
    path_kind = _hostile(registry, "os.system", "os:system")
    known = _hostile(registry, "sleep", "this:s")  # a real kind with a hostile target: the target is ignored
    run_until_idle(registry, max_parallel=2, timeout=TIMEOUT, poll_interval=0.05)
    for run_id, kind in ((evil, "this:s"), (unknown, "evil"), (path_kind, "os.system")):
        rec = registry.get(run_id)
        assert rec.status == "failed"
        assert rec.error.startswith(f"unknown job kind {kind!r}; registered kinds: ") and "sleep" in rec.error
        assert "nothing was imported" in rec.error and "\n" not in rec.error
        log = rec.log_path.read_text()
        assert ZEN not in log and "Traceback" not in log
        assert (rec.run_dir / "FAILED").read_text().startswith("unknown job kind")
    rec = registry.get(known)
    assert rec.status == "succeeded" and rec.metrics["steps"] == 10
    assert ZEN not in rec.log_path.read_text()


def test_hostile_row_in_process_imports_nothing(registry):
    """The same path inside this process (as a Ray task runs it): ``this`` is never imported."""
    from pitune_core.runs.worker import execute_run

    assert "this" not in sys.modules
    run_id = _hostile(registry, "evil", "this:s")
    assert execute_run(registry.db_path, run_id, claim=True) == "failed"
    assert "this" not in sys.modules
    assert "unknown job kind 'evil'" in registry.get(run_id).error


def test_the_allow_list_comes_from_the_scheduler_command_line(registry):
    """A scheduler started without the test module runs none of its kinds, although the rows name
    them: workers learn kinds from their starter's command line, not from the database."""
    run_id = registry.submit("noop", {})
    cmd = [sys.executable, "-m", "pitune_core.runs.executor", "--db", str(registry.db_path), "--idle-timeout", "0.5"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    rec = registry.get(run_id)
    assert rec.status == "failed" and rec.error.startswith("unknown job kind 'noop'; registered kinds: ")
    assert "transfer" in rec.error  # the defaults (pitune_core.jobs) are known
    bad = subprocess.run([*cmd, "--jobs-module", "../evil"], capture_output=True, text=True, timeout=TIMEOUT)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: not a module name: '../evil'"


def test_paths_stored_in_a_row_are_never_used(registry, tmp_path):
    """A row's run_dir / log_path from elsewhere cannot point a job, a log or a resume outside the
    registry: paths are derived from the (validated) run id; a run directory that is a symlink is refused."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    moved = registry.submit("noop", {})
    linked = registry.submit("noop", {})
    with registry._write() as conn:
        conn.execute("UPDATE runs SET run_dir = ?, log_path = ? WHERE id = ?",
                     (str(victim), str(victim / "precious.txt"), moved))
    rec = registry.get(moved)
    assert rec.run_dir == registry.runs_root / moved and rec.log_path == rec.run_dir / "log.txt"
    import shutil

    shutil.rmtree(registry.runs_root / linked)
    (registry.runs_root / linked).symlink_to(victim, target_is_directory=True)
    run_until_idle(registry, max_parallel=1, timeout=TIMEOUT, poll_interval=0.05)
    assert registry.get(moved).status == "succeeded"
    rec = registry.get(linked)
    assert rec.status == "failed" and "not a plain directory" in rec.error
    with pytest.raises(ValueError, match="not a plain directory"):
        registry.resume(linked)
    assert sorted(p.name for p in victim.iterdir()) == ["precious.txt"]  # nothing written, moved or logged there
    assert (victim / "precious.txt").read_text() == "keep me"
