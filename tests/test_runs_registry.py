"""Run registry: schema, transitions, id validation, multi-process writers, CLI."""

from __future__ import annotations

import io
import json
import sqlite3
import subprocess
import sys
import textwrap
import time

import jobkinds  # registers the test-only kinds: noop, sleep, fail, toy-train
import pytest

from pitune_core.cli import runs as cli
from pitune_core.runs.jobs import UnknownJobKindError, job_kinds, register_job, unregister_job
from pitune_core.runs.registry import (
    MIGRATIONS,
    SCHEMA_VERSION,
    RunNotFoundError,
    RunRegistry,
    apply_migrations,
    is_valid_run_id,
    new_run_id,
    pid_alive,
    validate_run_id,
)


@pytest.fixture
def registry(tmp_path):
    reg = RunRegistry(tmp_path / "db" / "registry.sqlite")
    yield reg
    reg.close()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ------------------------------------------------------------------ submit


def test_submit_creates_queued_run_and_directory(registry):
    run_id = registry.submit("sleep", {"steps": 2, "b": [1, 2]}, name="../../etc/passwd ; rm -rf /", resources={"num_cpus": 1})
    assert is_valid_run_id(run_id)
    rec = registry.get(run_id)
    assert rec.status == "queued" and rec.kind == "sleep" and rec.attempt == 0
    assert rec.name == "../../etc/passwd ; rm -rf /"  # kept verbatim, display only
    assert rec.run_dir == registry.runs_root / run_id  # the name never reaches a path
    assert rec.run_dir.parent == registry.db_path.parent / "runs"
    assert json.loads((rec.run_dir / "config.json").read_text()) == {"steps": 2, "b": [1, 2]}
    assert rec.log_path == rec.run_dir / "log.txt" and rec.log_path.exists()
    assert rec.config == {"steps": 2, "b": [1, 2]} and rec.resources == {"num_cpus": 1}
    # only the kind is stored: no import path a worker could be made to import
    assert registry._conn().execute("SELECT target FROM runs WHERE id = ?", (run_id,)).fetchone()[0] is None
    assert rec.created_at <= time.time() and rec.started_at is None


def test_unknown_kind_and_registered_kind(registry):
    with pytest.raises(UnknownJobKindError, match="unknown job kind 'no-such-kind'; registered kinds: .*sleep"):
        registry.submit("no-such-kind", {})
    register_job("sleep-again", jobkinds.sleep_job)
    try:
        run_id = registry.submit("sleep-again", {})
        assert registry.get(run_id).kind == "sleep-again"
        assert job_kinds()["sleep-again"] == "jobkinds:sleep_job"
    finally:
        unregister_job("sleep-again")
    with pytest.raises(UnknownJobKindError):
        registry.submit("sleep-again", {})
    assert [r.id for r in registry.list()] == [run_id]  # the refused submit left nothing behind


def test_only_module_level_functions_can_be_registered():
    def local_job(config, ctx):
        return {}

    with pytest.raises(TypeError, match="not an import path|workers never import"):
        register_job("by-path", "os:system")
    with pytest.raises(ValueError, match="module level"):
        register_job("local", local_job)
    with pytest.raises(ValueError, match="module level"):
        register_job("lambda", lambda config, ctx: {})
    with pytest.raises(ValueError, match="job kind must be"):
        register_job("../x", jobkinds.noop_job)
    assert not {"by-path", "local", "lambda", "../x"} & set(job_kinds())


def test_the_real_kinds_are_known_and_validate_before_queueing(registry):
    """Kinds of pitune_core.jobs are always known; a bad config is refused before anything is queued."""
    from pitune_core.runs.jobs import get_job

    assert get_job("transfer").fn.__module__ == "pitune_core.jobs"  # loaded on first use, by name, from code
    assert {"transfer", "train-expert", "transfer-pair"} <= set(job_kinds())
    bad = [
        ({"target": "no_such_task"}, "unknown task 'no_such_task'"),
        ({"target": "<img src=x>"}, "not a task identifier"),
        ({"target": "rt_polarity", "k": "3"}, "k must be a whole number"),
        ({"target": "rt_polarity", "k": 0}, "k must be at least 1"),
        ({"target": "rt_polarity", "shots": "abc"}, "shots must be a whole number"),
        ({"target": "rt_polarity", "weights": "1,2"}, "got 2 weights for 3 sources"),
        ({"target": "rt_polarity", "sources": "a,a"}, "more than once"),
        ({"target": "rt_polarity", "sources": ["rt_polarity"]}, "own sources"),
        ({"target": "rt_polarity", "method": "dora"}, "unknown expert type"),
        ({"target": "rt_polarity", "embedding": "x"}, "unknown embedding"),
        ({"target": "rt_polarity", "study": "/no/such/study"}, "not a directory"),
    ]
    for config, message in bad:
        with pytest.raises(ValueError, match=message):
            registry.submit("transfer", config)
    with pytest.raises(ValueError, match="unknown task"):
        registry.submit("train-expert", {"task": "nope"})
    with pytest.raises(ValueError, match="steps must be"):
        registry.submit("transfer-pair", {"target": "rt_polarity", "shots": 2, "steps": 0, "seed": 0})
    assert registry.list() == [] and list(registry.runs_root.iterdir()) == []  # nothing queued, no directory
    ok = registry.submit("transfer", {"target": "rt_polarity", "k": 2, "weights": "0.5,0.5", "shots": 4})
    assert registry.get(ok).status == "queued"


def test_list_filters_and_order(registry):
    a = registry.submit("sleep", {})
    b = registry.submit("fail", {})
    c = registry.submit("sleep", {})
    registry.request_cancel(b)
    assert [r.id for r in registry.list()] == [c, b, a]
    assert [r.id for r in registry.list(status="queued")] == [c, a]
    assert [r.id for r in registry.list(kind="fail")] == [b]
    assert [r.id for r in registry.list(limit=1)] == [c]
    assert registry.counts()["cancelled"] == 1
    with pytest.raises(ValueError):
        registry.list(status="bogus")


# -------------------------------------------------------------- transitions


def test_claim_next_is_priority_then_fifo(registry):
    low1 = registry.submit("sleep", {})
    high = registry.submit("sleep", {}, priority=5)
    low2 = registry.submit("sleep", {})
    ray_run = registry.submit("sleep", {}, executor="ray")
    order = [registry.claim_next().id for _ in range(3)]
    assert order == [high, low1, low2]
    assert registry.claim_next() is None  # the ray run is not the local scheduler's
    rec = registry.get(low1)
    assert rec.status == "running" and rec.attempt == 1 and rec.started_at is not None
    assert registry.claim(ray_run).status == "running"
    assert registry.claim(ray_run) is None  # already claimed


def test_finish_writes_result_files_and_never_overwrites(registry):
    ok, bad = registry.submit("sleep", {}), registry.submit("sleep", {})
    registry.claim(ok)
    registry.claim(bad)
    assert registry.set_progress(ok, stage="train", step=3, total=10, loss=0.5)
    assert registry.get(ok).progress["step"] == 3
    assert registry.finish(ok, "succeeded", metrics={"acc": 0.9})
    assert registry.finish(bad, "failed", error="ValueError: nope", details="Traceback...\nValueError: nope")
    r_ok, r_bad = registry.get(ok), registry.get(bad)
    assert r_ok.status == "succeeded" and r_ok.metrics == {"acc": 0.9} and r_ok.finished_at
    assert json.loads((r_ok.run_dir / "metrics.json").read_text()) == {"acc": 0.9}
    assert r_bad.status == "failed" and r_bad.error == "ValueError: nope"
    assert "Traceback" in (r_bad.run_dir / "error.txt").read_text()
    assert (r_bad.run_dir / "FAILED").exists()
    # a late/duplicate report changes nothing
    assert not registry.finish(ok, "failed", error="late")
    assert not registry.set_progress(ok, stage="late")
    assert registry.get(ok).status == "succeeded" and registry.get(ok).progress["stage"] == "train"
    with pytest.raises(ValueError):
        registry.finish(ok, "queued")


def test_cancel_queued_is_immediate_running_sets_flag(registry):
    queued, running = registry.submit("sleep", {}), registry.submit("sleep", {})
    registry.claim(running)
    assert registry.request_cancel(queued).status == "cancelled"
    rec = registry.request_cancel(running)
    assert rec.status == "running" and rec.cancel_requested
    assert registry.is_cancel_requested(running)
    assert registry.claim(queued) is None  # a cancelled run is never started


def test_recover_interrupted_and_resume(registry):
    orphan, alive, queued = (registry.submit("sleep", {}) for _ in range(3))
    registry.claim(orphan, pid=_dead_pid())
    registry.claim(alive)  # owned by this (live) process
    recovered = registry.recover_interrupted()
    assert [r.id for r in recovered] == [orphan]
    assert registry.get(orphan).status == "interrupted" and "gone" in registry.get(orphan).error
    assert registry.get(alive).status == "running" and registry.get(queued).status == "queued"
    assert "marked interrupted" in registry.get(orphan).log_path.read_text()

    rec = registry.resume(orphan)
    assert rec.status == "queued" and rec.error is None and rec.worker_pid is None
    again = registry.claim_next()
    assert again.id == orphan and again.attempt == 2

    registry.finish(orphan, "failed", error="boom", details="tb")
    run_dir = registry.get(orphan).run_dir
    (run_dir / "expert").mkdir()  # something the job wrote before it failed
    registry.resume(orphan)  # failed runs can be resumed too; the old attempt is moved aside whole
    assert sorted(p.name for p in run_dir.iterdir()) == ["attempt-1", "attempt-2", "config.json", "log.txt"]
    assert sorted(p.name for p in (run_dir / "attempt-2").iterdir()) == ["FAILED", "error.txt", "expert"]
    assert (run_dir / "attempt-2" / "error.txt").read_text().startswith("tb")
    assert (run_dir / "attempt-1" / "INTERRUPTED").read_text().startswith("interrupted: worker process")
    with pytest.raises(ValueError, match="only"):
        registry.resume(queued)


def test_pid_alive_detects_reuse():
    import os

    from pitune_core.runs.registry import process_start_ticks

    me = os.getpid()
    assert pid_alive(me) and pid_alive(me, process_start_ticks(me))
    if process_start_ticks(me) is not None:
        assert not pid_alive(me, process_start_ticks(me) + 1)  # same pid, other process
    assert not pid_alive(_dead_pid())
    assert not pid_alive(None) and not pid_alive(0)


# ---------------------------------------------------------------------- ids


BAD_IDS = [
    "",
    "../../etc/passwd",
    "20261126-161500-3f9a1c/../x",
    "20261126-161500-3F9A1C",
    "20261126-161500-3f9a1",
    "20261126_161500_3f9a1c",
    "' OR 1=1 --",
    "20261126-161500-3f9a1c\n",
    None,
    123,
]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_invalid_run_ids_are_rejected(registry, bad):
    for call in (
        registry.get,
        registry.request_cancel,
        registry.resume,
        registry.run_dir_for,
        registry.claim,
        registry.is_cancel_requested,
        lambda r: registry.finish(r, "failed"),
        lambda r: registry.set_progress(r, stage="x"),
        lambda r: registry.get_many([r]),
    ):
        with pytest.raises(ValueError, match="invalid run id"):
            call(bad)


def test_valid_but_unknown_id(registry):
    run_id = new_run_id()
    assert validate_run_id(run_id) == run_id
    with pytest.raises(RunNotFoundError):
        registry.get(run_id)
    with pytest.raises(KeyError):
        registry.request_cancel(run_id)


# --------------------------------------------------------------- migrations


def test_old_schema_is_migrated(tmp_path):
    db = tmp_path / "old.sqlite"
    conn = sqlite3.connect(db, isolation_level=None)
    assert apply_migrations(conn, upto=1) == 1
    run_dir = tmp_path / "runs" / "20250101-000000-abcdef"
    run_dir.mkdir(parents=True)
    conn.execute(
        "INSERT INTO runs (id, kind, name, config, status, created_at, run_dir, log_path) "
        "VALUES ('20250101-000000-abcdef', 'sleep', 'old', '{\"steps\": 1}', 'queued', 1.0, ?, ?)",
        (str(run_dir), str(run_dir / "log.txt")),
    )
    conn.close()

    reg = RunRegistry(db)
    assert reg.schema_version == SCHEMA_VERSION == MIGRATIONS[-1][0] > 1
    versions = [r[0] for r in reg._conn().execute("SELECT version FROM schema_version ORDER BY version")]
    assert versions == [m[0] for m in MIGRATIONS]
    old = reg.get("20250101-000000-abcdef")
    assert (old.name, old.config, old.executor, old.priority, old.resources, old.attempt) == (
        "old", {"steps": 1}, "local", 0, {}, 0,
    )
    assert "target" not in old.to_dict()  # the old column stays in the schema but is never read
    assert reg.claim_next().id == old.id  # the new claim index/columns work on old rows
    assert RunRegistry(db).schema_version == SCHEMA_VERSION  # reopening is a no-op


def test_newer_schema_is_refused(tmp_path):
    db = tmp_path / "new.sqlite"
    RunRegistry(db).close()
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("INSERT INTO schema_version(version) VALUES (999)")
    conn.close()
    with pytest.raises(RuntimeError, match="newer"):
        RunRegistry(db)


# ------------------------------------------------------ concurrent processes

_WRITER = textwrap.dedent(
    """
    import os, sys, time
    import jobkinds  # the test kinds (this folder is on PYTHONPATH once the test imported it)
    from pitune_core.runs.registry import RunRegistry
    reg = RunRegistry(sys.argv[1])
    while not os.path.exists(sys.argv[2]):   # start line: all writers go together
        time.sleep(0.005)
    mine = [reg.submit("sleep", {"writer": os.getpid(), "i": i}, name=f"w{os.getpid()}-{i}") for i in range(15)]
    claimed = 0
    while True:
        rec = reg.claim_next()
        if rec is None:
            if reg.count_active("local")[0] == 0:
                break
            continue
        for step in range(5):
            reg.set_progress(rec.id, stage="s", step=step, total=5)
        reg.finish(rec.id, "succeeded", metrics={"claimed_by": os.getpid()})
        claimed += 1
    print(claimed)
    """
)


def test_concurrent_writers_from_several_processes(tmp_path):
    db = tmp_path / "shared.sqlite"
    RunRegistry(db).close()
    go = tmp_path / "go"
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(db), str(go)], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    time.sleep(0.3)
    go.touch()
    claimed = [int(p.communicate(timeout=60)[0].strip()) for p in procs]
    assert all(p.returncode == 0 for p in procs)

    reg = RunRegistry(db)
    assert reg.integrity_check() == "ok"
    runs = reg.list()
    assert len(runs) == 60 == sum(claimed)
    assert len({r.id for r in runs}) == 60
    assert all(r.status == "succeeded" and r.attempt == 1 for r in runs)  # each claimed exactly once
    assert all(r.progress["step"] == 4 for r in runs)
    assert {r.config["writer"] for r in runs} == {p.pid for p in procs}
    assert all((r.run_dir / "config.json").exists() for r in runs)


# ------------------------------------------------------------------------ cli


def _cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    parser = cli.configure_parser(__import__("argparse").ArgumentParser())
    code = cli.handle(parser.parse_args(list(argv)), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_cli_commands(registry):
    db = str(registry.db_path)
    a = registry.submit("sleep", {"steps": 1}, name="nice \x1b[31mred\x1b[0m name")
    b = registry.submit("fail", {})
    registry.claim(b)
    registry.append_log(registry.get(b).log_path, "line one\nline two\nline three")
    registry.finish(b, "failed", error="RuntimeError: x")

    code, out, _ = _cli("--db", db, "list")
    assert code == 0 and a in out and b in out and "\x1b" not in out  # escape codes are not echoed
    code, out, _ = _cli("list", "--db", db, "--status", "failed", "--json")
    assert code == 0 and [r["id"] for r in json.loads(out)] == [b]
    code, out, _ = _cli("--db", db, "show", b)
    assert code == 0 and "RuntimeError: x" in out and "failed" in out
    code, out, _ = _cli("--db", db, "logs", b, "--tail", "2")
    assert code == 0 and out.splitlines()[-1].endswith("line three") and len(out.splitlines()) == 2
    code, out, _ = _cli("--db", db, "cancel", a)
    assert code == 0 and registry.get(a).status == "cancelled"
    code, out, _ = _cli("--db", db, "resume", b, "--no-scheduler")
    assert code == 0 and registry.get(b).status == "queued"
    code, _, err = _cli("--db", db, "show", "../../etc/passwd")
    assert code == 2 and "invalid run id" in err
    code, _, err = _cli("--db", db, "show", new_run_id())
    assert code == 1 and "no run" in err
    code, out, _ = _cli("--db", db, "submit", "sleep", "--config", '{"steps": 1}', "--no-scheduler")
    assert code == 0 and registry.get(out.strip()).config == {"steps": 1}
    code, out, _ = _cli("--db", str(registry.db_path.parent / "missing.sqlite"), "list")
    assert code == 0 and "no run registry" in out


def test_cli_module_entry_point_and_light_imports(registry):
    registry.submit("sleep", {})
    proc = subprocess.run(
        [sys.executable, "-m", "pitune_core.cli.runs", "--db", str(registry.db_path), "list", "--json"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)) == 1
    code = (
        "import sys, pitune_core.runs, pitune_core.cli.runs, pitune_core.runs.worker, pitune_core.runs.ray_executor;"
        "heavy = {'torch', 'ray', 'numpy'} & set(sys.modules); assert not heavy, heavy"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_cli_refuses_bad_submissions_with_one_line(registry):
    db = str(registry.db_path)
    cases = [
        (("submit", "no-such-kind"), "unknown job kind 'no-such-kind'"),
        (("submit", "sleep", "--config", "{not json"), "--config is not valid JSON"),
        (("submit", "sleep", "--config", "[1, 2]"), "must be a JSON object"),
        (("submit", "sleep", "--config", "@/no/such/file.json"), "cannot read the config file"),
        (("submit", "sleep", "--config", '{"steps": "many"}'), "steps must be a whole number"),
        (("submit", "transfer", "--config", '{"target": "../../etc"}'), "not a task identifier"),
        (("submit", "transfer", "--config", '{"target": "rt_polarity", "shots": "abc"}'), "shots must be"),
    ]
    for argv, message in cases:
        code, out, err = _cli("--db", db, *argv, "--no-scheduler")
        assert code == 1 and message in err, (argv, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert registry.list() == []  # nothing was queued
    for cmd in ("show", "cancel", "logs", "resume"):
        code, _, err = _cli("--db", db, cmd, "x; DROP TABLE runs")
        assert code == 2 and err.startswith("error: invalid run id") and len(err.strip().splitlines()) == 1


def test_default_db_has_one_owner(monkeypatch, tmp_path):
    from pitune_core.paths import default_runs_db
    from pitune_core.runs.registry import default_db_path

    monkeypatch.setenv("PITUNE_RUNS_DB", str(tmp_path / "elsewhere.sqlite"))
    assert default_db_path() == default_runs_db() == tmp_path / "elsewhere.sqlite"
    monkeypatch.chdir(tmp_path)
    reg = RunRegistry()
    assert reg.db_path == tmp_path / "elsewhere.sqlite"
    run_id = reg.submit("noop", {})
    code, out, _ = _cli("list", "--json")  # the CLI's default follows it too
    assert code == 0 and [r["id"] for r in json.loads(out)] == [run_id]
    assert not (tmp_path / "runs" / "registry.sqlite").exists()
    monkeypatch.delenv("PITUNE_RUNS_DB")
    assert default_db_path() == default_runs_db()


def test_outcome_files_agree_with_the_database(registry):
    queued, running, stopped = (registry.submit("sleep", {}) for _ in range(3))
    registry.request_cancel(queued)
    d = registry.get(queued).run_dir
    assert sorted(p.name for p in d.iterdir()) == ["CANCELLED", "config.json", "log.txt"]
    assert (d / "CANCELLED").read_text().startswith("cancelled while queued")

    # a job that marked itself INTERRUPTED when its cancel arrived (as run_transfer does): the
    # registry's final word replaces it, and no FAILED / traceback appears
    registry.claim(running)
    registry.request_cancel(running)
    d = registry.get(running).run_dir
    (d / "INTERRUPTED").write_text("RunCancelled: run was cancelled\n")
    assert registry.finish(running, "cancelled", error="run was cancelled")
    assert sorted(p.name for p in d.iterdir()) == ["CANCELLED", "config.json", "log.txt"]

    registry.claim(stopped)
    registry.finish(stopped, "interrupted", error="interrupted: worker received signal 15")
    d = registry.get(stopped).run_dir
    assert (d / "INTERRUPTED").read_text() == "interrupted: worker received signal 15\n"
    assert not (d / "FAILED").exists() and not (d / "error.txt").exists()


# --------------------------------------------------------- read-only file system


def _read_only(ro_dir, argv, env=None):
    """Run ``argv`` with ``ro_dir`` bind-mounted read-only (a real EROFS) in a private mount namespace."""
    import os
    import shutil

    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("needs unshare(1) for a read-only mount")
    prefix = [unshare, "-m"] if os.geteuid() == 0 else [unshare, "-r", "-m"]
    script = 'mount --bind -o ro "$0" "$0" && exec "$@"'
    probe = subprocess.run([*prefix, "sh", "-c", script + ' && exit 1', str(ro_dir), "touch", str(ro_dir / "probe")],
                           capture_output=True, timeout=60)
    if probe.returncode == 0 or (ro_dir / "probe").exists() or b"Read-only" not in probe.stderr:
        pytest.skip("cannot make a read-only bind mount here (no mount namespaces)")
    return subprocess.run([*prefix, "sh", "-c", script, str(ro_dir), *argv], capture_output=True, text=True,
                          timeout=120, env=env)


def test_every_runs_command_on_a_read_only_registry_says_one_line(tmp_path):
    ro = tmp_path / "ro"
    reg = RunRegistry(ro / "registry.sqlite")
    run_id = reg.submit("sleep", {})
    reg.close()
    before = sorted(p.relative_to(ro) for p in ro.rglob("*"))
    # reading needs no write (issue 29): list, show and logs read a registry on read-only media
    for argv in (["list"], ["list", "--json"], ["show", run_id], ["logs", run_id]):
        res = _read_only(ro, [sys.executable, "-m", "pitune_core", "runs", "--db", str(ro / "registry.sqlite"),
                              *argv])
        assert res.returncode == 0 and res.stderr == "", (argv, res.stdout, res.stderr)
        assert argv[0] == "logs" or run_id in res.stdout, (argv, res.stdout)
    commands = [["cancel", run_id], ["resume", run_id], ["recover"], ["submit", "sleep", "--no-scheduler"],
                ["submit", "transfer", "--config", '{"target": "rt_polarity"}', "--no-scheduler"]]
    for argv in commands:
        res = _read_only(ro, [sys.executable, "-m", "pitune_core", "runs", "--db", str(ro / "registry.sqlite"),
                              *argv])
        assert res.returncode == 2, (argv, res.stdout, res.stderr)
        assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr, (argv, res.stderr)
        assert "read-only file system" in res.stderr and "writable location" in res.stderr, res.stderr
    # a registry that does not exist yet on a read-only file system: list says so, submit cannot create it
    res = _read_only(ro, [sys.executable, "-m", "pitune_core", "runs", "--db", str(ro / "new" / "r.sqlite"), "list"])
    assert res.returncode == 0 and "no run registry" in res.stdout
    res = _read_only(ro, [sys.executable, "-m", "pitune_core", "runs", "--db", str(ro / "new" / "r.sqlite"),
                          "submit", "sleep"])
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "Read-only file system" in res.stderr
    assert sorted(p.relative_to(ro) for p in ro.rglob("*")) == before  # nothing written, nothing lost
    assert RunRegistry(ro / "registry.sqlite").get(run_id).status == "queued"


def test_transfer_submit_with_a_read_only_home_or_registry_says_one_line(tmp_path):
    """`pitune transfer --submit` with a read-only HOME (so the default cache) or registry: one line, exit 2."""
    import os

    from pitune_core.paths import cache_dir

    ro = tmp_path / "ro"
    (ro / "home").mkdir(parents=True)
    (ro / "db").mkdir()
    argv = [sys.executable, "-m", "pitune_core", "transfer", "rt_polarity", "--submit",
            "--db", str(ro / "db" / "registry.sqlite")]
    base = {k: v for k, v in os.environ.items() if k != "PITUNE_CACHE"}
    # 1. read-only HOME: the default cache (~/.cache/pitune) cannot be created
    res = _read_only(ro, argv, env={**base, "HOME": str(ro / "home")})
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr, res.stderr
    assert "read-only" in res.stderr.lower()
    # 2. a writable cache, but the registry is on the read-only file system
    res = _read_only(ro, argv, env={**base, "HOME": str(ro / "home"), "PITUNE_CACHE": str(cache_dir())})
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr, res.stderr
    assert "cannot open the run registry" in res.stderr and "read-only file system" in res.stderr.lower()
    assert sorted(ro.rglob("*")) == sorted([ro / "home", ro / "db"])  # nothing written
