"""Local executor: a scheduler that runs each queued run in its own worker process.

``submit`` (registry) only inserts a queued run.  A :class:`LocalScheduler`
claims queued runs and starts one ``python -m pitune_core.runs.worker`` process
per run, at most ``max_parallel`` at once; the rest wait in the queue.  The
caller's process (e.g. Streamlit) never executes a job.

* :func:`ensure_scheduler` starts a detached scheduler process
  (``python -m pitune_core.runs.executor --db DB``) unless one is alive; a lock
  file next to the database (``<db>.scheduler.lock``, an ``flock`` released by
  the kernel when its holder dies) keeps it single-instance.  It exits after
  ``idle_timeout`` seconds without work.
* :func:`run_until_idle` runs a scheduler in the calling thread until the
  queue is drained (CLI, tests); :func:`wait` polls until runs finish.

Workers learn the job kinds they may run from this process, never from the
database: each worker's command line names the trusted modules that register
kinds (``--jobs-module``; :func:`~pitune_core.runs.jobs.worker_job_modules`:
the defaults, the modules of the kinds registered in the process that started
the scheduler, and any given explicitly), and the detached scheduler gets the
same list on its own command line.

A worker that exits without recording an outcome (killed, segfault) is marked
``failed`` with its exit signal/code; a worker that ignores a cancel request is
sent SIGTERM after ``cancel_grace`` seconds and SIGKILL ``kill_grace`` seconds
later.  Workers run in their own session: stopping the scheduler does not stop
them (they finish and record their outcome; a later scheduler counts them
against ``max_parallel``).
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterable

from .registry import (
    CANCELLED,
    FAILED,
    FINAL_STATUSES,
    INTERRUPTED,
    RUNNING,
    RunRecord,
    RunRegistry,
)
from .jobs import import_job_modules, thread_env, worker_job_modules
import pitune_core

__all__ = [
    "LocalScheduler",
    "ensure_scheduler",
    "scheduler_running",
    "run_until_idle",
    "wait",
    "default_max_parallel",
    "available_cpus",
    "worker_env",
    "main",
]

SCHEDULER_NAME = "local"


def available_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_max_parallel() -> int:
    """``$PITUNE_MAX_PARALLEL`` or half the CPUs (1 on a 2-core machine)."""
    env = os.environ.get("PITUNE_MAX_PARALLEL")
    if env:
        return max(1, int(env))
    return max(1, available_cpus() // 2)


def _package_parent() -> str:
    return str(Path(pitune_core.__file__).resolve().parent.parent)


def _child_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a pitune child process: unbuffered output, importable pitune_core."""
    env = dict(os.environ if base is None else base)
    env["PYTHONUNBUFFERED"] = "1"
    parent = _package_parent()
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if parent not in paths:
        env["PYTHONPATH"] = os.pathsep.join([parent, *paths])
    return env


def worker_env(num_threads: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of a worker process: thread caps (torch/BLAS/OpenMP) + :func:`_child_env`."""
    env = _child_env(base)
    env.update(thread_env(num_threads))
    return env


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"SIG{sig}"


@dataclass
class _Child:
    run_id: str
    proc: subprocess.Popen
    log_path: Path
    started: float = field(default_factory=time.time)
    cancel_seen: float | None = None
    term_sent: float | None = None
    kill_sent: float | None = None


class LocalScheduler:
    """Claims queued local runs and runs each in a worker subprocess.

    Use :meth:`run` (blocking), :meth:`run_until_idle`, or :meth:`start` /
    :meth:`stop` (background thread).  ``recover_interrupted`` runs first.
    """

    def __init__(
        self,
        registry: RunRegistry,
        max_parallel: int | None = None,
        *,
        poll_interval: float = 0.1,
        cancel_grace: float = 10.0,
        kill_grace: float = 5.0,
        recover_interval: float = 5.0,
        threads_per_worker: int | None = None,
        python: str | None = None,
        job_modules: Iterable[str] = (),
    ) -> None:
        self.registry = registry
        self.max_parallel = max(1, int(max_parallel or default_max_parallel()))
        self.poll_interval = float(poll_interval)
        self.cancel_grace = float(cancel_grace)
        self.kill_grace = float(kill_grace)
        self.recover_interval = float(recover_interval)
        self.threads_per_worker = threads_per_worker or max(1, available_cpus() // self.max_parallel)
        self.python = python or sys.executable
        self.job_modules = list(job_modules)
        self.children: dict[str, _Child] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_recover = 0.0
        self._recovered_once = False

    # ------------------------------------------------------------- lifecycle

    def start(self) -> "LocalScheduler":
        """Run the scheduler loop in a background thread."""
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name="pitune-local-scheduler", daemon=True)
        self._thread.start()
        return self

    def stop(self, *, terminate_workers: bool = False, timeout: float = 10.0) -> None:
        """Stop the loop; optionally terminate running workers (they record ``interrupted``)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if terminate_workers:
            self.terminate_workers(timeout=timeout)

    def terminate_workers(self, timeout: float = 10.0) -> None:
        for child in self.children.values():
            self._signal(child, signal.SIGTERM)
        deadline = time.time() + timeout
        while self.children and time.time() < deadline:
            self._reap()
            time.sleep(0.05)
        for child in list(self.children.values()):
            self._signal(child, signal.SIGKILL)
        while self.children:
            self._reap()
            time.sleep(0.02)

    def __enter__(self) -> "LocalScheduler":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop(terminate_workers=True)

    # ------------------------------------------------------------------ loop

    def run(self, *, until_idle: bool = False, idle_timeout: float | None = None, timeout: float | None = None) -> None:
        """Loop until stopped; ``until_idle``: until no local run is queued or running;
        ``idle_timeout``: until that long without any local work."""
        deadline = None if timeout is None else time.time() + timeout
        idle_since: float | None = None
        while not self._stop.is_set():
            try:
                self.step()
                queued, running = self.registry.count_active("local")
            except sqlite3.OperationalError as exc:  # e.g. locked for longer than busy_timeout
                print(f"[scheduler] registry error, retrying: {exc}", file=sys.stderr, flush=True)
                self._stop.wait(1.0)
                continue
            busy = bool(self.children) or queued > 0 or running > 0
            if until_idle and not busy:
                return
            if busy:
                idle_since = None
            elif idle_timeout is not None:
                idle_since = idle_since or time.time()
                if time.time() - idle_since >= idle_timeout:
                    return
            if deadline is not None and time.time() >= deadline:
                raise TimeoutError(
                    f"local runs still active after {timeout}s ({queued} queued, {running} running)"
                )
            self._stop.wait(self.poll_interval)

    def run_until_idle(self, timeout: float | None = None) -> None:
        self.run(until_idle=True, timeout=timeout)

    def step(self) -> None:
        """One scheduling pass: reap, recover, enforce cancels, start runs."""
        self._reap()
        now = time.time()
        if not self._recovered_once or now - self._last_recover >= self.recover_interval:
            self.registry.recover_interrupted(exclude=self.children)
            self._recovered_once, self._last_recover = True, now
        self._enforce_cancels(now)
        self._fill_slots()

    # ------------------------------------------------------------- internals

    def _fill_slots(self) -> None:
        while not self._stop.is_set():
            _queued, running = self.registry.count_active("local")
            # running already includes our children (claimed runs), plus runs of
            # other schedulers or orphaned-but-alive workers of an earlier one.
            if max(running, len(self.children)) >= self.max_parallel:
                return
            record = self.registry.claim_next("local")
            if record is None:
                return
            self._spawn(record)

    def _spawn(self, record: RunRecord) -> None:
        threads = int(record.resources.get("num_cpus") or self.threads_per_worker)
        cmd = [self.python, "-m", "pitune_core.runs.worker", "--db", str(self.registry.db_path)]
        for module in worker_job_modules(self.job_modules):
            cmd += ["--jobs-module", module]
        cmd.append(record.id)
        if record.run_dir.is_symlink() or not record.run_dir.is_dir():  # never write through a link
            self.registry.finish(record.id, FAILED, error=f"run directory {record.run_dir} is missing or not a "
                                                          "plain directory inside the registry; not started")
            return
        log: IO[bytes] | None = None
        try:
            log = open(record.log_path, "ab")
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=worker_env(threads),
                start_new_session=True,  # own process group: Ctrl-C on the scheduler spares it
                close_fds=True,
            )
        except OSError as exc:
            self.registry.finish(record.id, FAILED, error=f"could not start worker process: {exc}")
            return
        finally:
            if log is not None:
                log.close()
        self.children[record.id] = _Child(record.id, proc, Path(record.log_path))

    def _signal(self, child: _Child, sig: int) -> None:
        try:
            os.killpg(child.proc.pid, sig)
        except ProcessLookupError:
            pass
        except OSError as exc:
            if exc.errno != errno.ESRCH:
                try:
                    child.proc.send_signal(sig)
                except OSError:
                    pass

    def _reap(self) -> None:
        for run_id, child in list(self.children.items()):
            rc = child.proc.poll()
            if rc is None:
                continue
            del self.children[run_id]
            self._on_exit(child, rc)

    def _on_exit(self, child: _Child, rc: int) -> None:
        try:
            record = self.registry.get(child.run_id)
        except KeyError:
            return
        if record.status != RUNNING:
            return  # the worker recorded its outcome
        if rc < 0:
            what = f"worker exited with signal {-rc} ({_signal_name(-rc)})"
        else:
            what = f"worker exited with code {rc} without recording a result"
        if record.cancel_requested:
            status, error = CANCELLED, f"cancelled: {what} after a cancel request"
        else:
            status, error = FAILED, what
        # also override 'interrupted' in case a concurrent recover_interrupted() got there first
        if self.registry.finish(child.run_id, status, error=error, only_if=(RUNNING, INTERRUPTED)):
            self.registry.append_log(child.log_path, f"[scheduler] {error}")

    def _enforce_cancels(self, now: float) -> None:
        if not self.children:
            return
        records = self.registry.get_many(self.children)
        for run_id, child in self.children.items():
            rec = records.get(run_id)
            if rec is None or not rec.cancel_requested:
                continue
            if child.cancel_seen is None:
                child.cancel_seen = now
            if child.term_sent is None and now - child.cancel_seen >= self.cancel_grace:
                child.term_sent = now
                self.registry.append_log(
                    child.log_path, f"[scheduler] job ignored the cancel request for {self.cancel_grace:g}s: SIGTERM"
                )
                self._signal(child, signal.SIGTERM)
            elif child.term_sent is not None and child.kill_sent is None and now - child.term_sent >= self.kill_grace:
                child.kill_sent = now
                self.registry.append_log(child.log_path, "[scheduler] worker still alive after SIGTERM: SIGKILL")
                self._signal(child, signal.SIGKILL)


# ------------------------------------------------------------------ helpers


def run_until_idle(
    registry: RunRegistry,
    max_parallel: int | None = None,
    *,
    timeout: float | None = None,
    **scheduler_kwargs: object,
) -> None:
    """Run queued local runs (in worker processes) until none is queued or running."""
    LocalScheduler(registry, max_parallel, **scheduler_kwargs).run_until_idle(timeout=timeout)  # type: ignore[arg-type]


def wait(
    registry: RunRegistry,
    run_ids: Iterable[str],
    timeout: float | None = None,
    *,
    poll_interval: float = 0.1,
) -> dict[str, RunRecord]:
    """Block until every run is final (succeeded/failed/cancelled/interrupted)."""
    ids = list(run_ids)
    deadline = None if timeout is None else time.time() + timeout
    while True:
        records = registry.get_many(ids)
        missing = [r for r in ids if r not in records]
        if missing:
            raise KeyError(f"unknown run ids: {missing}")
        pending = [r for r in ids if records[r].status not in FINAL_STATUSES]
        if not pending:
            return {r: records[r] for r in ids}
        if deadline is not None and time.time() >= deadline:
            raise TimeoutError(f"{len(pending)} run(s) not finished after {timeout}s: {pending[:5]}")
        time.sleep(poll_interval)


# -------------------------------------------------------- single instance


def _lock_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".scheduler.lock")


class _SchedulerLock:
    """Exclusive lock held by the running scheduler; the kernel drops it when the holder dies.

    :func:`scheduler_running` probes it with a brief *shared* lock (probes never
    block each other); the scheduler retries its exclusive lock for ``wait``
    seconds so that a probe happening at the same instant cannot make it quit.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._fallback = None

    def acquire(self, *, shared: bool = False, wait: float = 0.0) -> bool:
        try:
            import fcntl
        except ImportError:  # Windows
            import filelock

            lock = filelock.FileLock(str(self.path), timeout=wait)
            try:
                lock.acquire()
            except filelock.Timeout:
                return False
            self._fallback = lock
            return True
        if shared:  # a probe: no file means no scheduler ever held it (and works on a read-only fs)
            try:
                fd = os.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                return True
        else:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    return False
                time.sleep(0.01)
        if not shared:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock; the file stays (no unlink race)
            self._fd = None
        if self._fallback is not None:
            self._fallback.release()
            self._fallback = None


def scheduler_running(db_path: str | os.PathLike[str]) -> bool:
    """True if a scheduler (detached or ``runs scheduler``) holds the lock for this database."""
    lock = _SchedulerLock(_lock_path(Path(db_path).expanduser().resolve()))
    if lock.acquire(shared=True):
        lock.release()
        return False
    return True


def ensure_scheduler(
    db_path: str | os.PathLike[str],
    max_parallel: int | None = None,
    *,
    idle_timeout: float = 120.0,
    job_modules: Iterable[str] = (),
) -> int | None:
    """Start a detached scheduler for ``db_path`` unless one is alive.

    Its workers run the kinds of :func:`worker_job_modules` of *this* process (plus
    ``job_modules``).  A scheduler already running keeps the modules it was started
    with: a run of a kind it does not know fails with "unknown job kind".

    Returns the new scheduler's pid, or ``None`` if one was already running.
    The scheduler is daemonised (double fork): it is not a child of the caller,
    so it outlives it and never lingers as a zombie.  Two concurrent callers may
    both start one; the loser finds the lock taken and exits at once.  Its output
    goes to ``<runs_root>/scheduler.log``.
    """
    db = Path(db_path).expanduser().resolve()
    if scheduler_running(db):
        return None
    registry = RunRegistry(db)  # creates/migrates the db before the scheduler opens it
    log_path = registry.runs_root / "scheduler.log"
    cmd = [
        sys.executable, "-m", "pitune_core.runs.executor", "--db", str(db),
        "--idle-timeout", str(idle_timeout), "--detach", "--log", str(log_path),
    ]
    if max_parallel:
        cmd += ["--max-parallel", str(int(max_parallel))]
    for module in worker_job_modules(job_modules):
        cmd += ["--jobs-module", module]
    proc = subprocess.run(
        cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=_child_env(),
        start_new_session=True, close_fds=True, timeout=120,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"could not start the scheduler: {proc.stderr.strip() or proc.returncode}")
    return int(proc.stdout.strip().splitlines()[-1])


def _detach(log_path: str | None) -> None:
    """Fork; the parent prints the child's pid and exits; the child keeps going."""
    pid = os.fork()
    if pid:
        os.write(1, f"{pid}\n".encode())
        os._exit(0)
    os.setsid()
    fd = os.open(log_path or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def serve(
    db_path: str | os.PathLike[str],
    max_parallel: int | None = None,
    *,
    idle_timeout: float | None = 120.0,
    install_signal_handlers: bool = True,
    job_modules: Iterable[str] = (),
    **scheduler_kwargs: object,
) -> int:
    """Single-instance scheduler loop (the detached process, or ``runs scheduler``).

    Returns 0 after ``idle_timeout`` seconds without work or a SIGTERM/SIGINT;
    1 if another scheduler already holds the lock.
    """
    registry = RunRegistry(db_path)
    modules = import_job_modules(job_modules)  # fail here, not in every worker
    lock = _SchedulerLock(_lock_path(registry.db_path))
    if not lock.acquire(wait=2.0):
        print(f"another scheduler is already running for {registry.db_path}", file=sys.stderr)
        return 1
    sched = LocalScheduler(registry, max_parallel, job_modules=modules, **scheduler_kwargs)  # type: ignore[arg-type]
    previous = {}
    if install_signal_handlers and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda *_: sched._stop.set())
    heartbeat_stop = threading.Event()

    def beat() -> None:
        while not heartbeat_stop.wait(5.0):
            try:
                registry.record_scheduler(SCHEDULER_NAME)
            except Exception:
                pass

    try:
        registry.record_scheduler(SCHEDULER_NAME, max_parallel=sched.max_parallel, started=True)
        recovered = registry.recover_interrupted()
        print(
            f"[{time.strftime('%H:%M:%S')}] scheduler pid {os.getpid()} for {registry.db_path} "
            f"(max_parallel={sched.max_parallel}, idle_timeout={idle_timeout}); "
            f"recovered {len(recovered)} interrupted run(s)",
            flush=True,
        )
        threading.Thread(target=beat, daemon=True).start()
        while True:
            sched.run(idle_timeout=idle_timeout)
            if sched._stop.is_set():
                break
            # Idle exit.  A run submitted just before a caller saw our lock (and so
            # started no scheduler) must not be stranded: drop the lock, then look
            # at the queue once more and take over again if anything is waiting.
            registry.clear_scheduler(SCHEDULER_NAME)
            lock.release()
            if registry.count_active("local")[0] == 0 or not lock.acquire():
                break
            registry.record_scheduler(SCHEDULER_NAME, max_parallel=sched.max_parallel, started=True)
        print(f"[{time.strftime('%H:%M:%S')}] scheduler exiting ({len(sched.children)} worker(s) left running)", flush=True)
        return 0
    finally:
        heartbeat_stop.set()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        try:
            registry.clear_scheduler(SCHEDULER_NAME)
        finally:
            lock.release()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pitune_core.runs.executor", description="pitune local run scheduler")
    parser.add_argument("--db", required=True)
    parser.add_argument("--max-parallel", type=int, default=None)
    parser.add_argument("--idle-timeout", type=float, default=120.0, help="exit after this many idle seconds (<0: never)")
    parser.add_argument("--detach", action="store_true", help="daemonise; print the scheduler's pid")
    parser.add_argument("--log", default=None, help="with --detach: append output here")
    parser.add_argument("--jobs-module", action="append", default=[], metavar="MODULE",
                        help="a trusted module that registers job kinds when imported (repeatable)")
    args = parser.parse_args(argv)
    if args.detach:
        _detach(args.log)
    idle = None if args.idle_timeout is not None and args.idle_timeout < 0 else args.idle_timeout
    try:
        return serve(args.db, args.max_parallel, idle_timeout=idle, job_modules=args.jobs_module)
    except (ValueError, RuntimeError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
