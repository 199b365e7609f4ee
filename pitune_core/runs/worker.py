"""Execute one run: the code path shared by the local executor and Ray.

``python -m pitune_core.runs.worker --db DB [--jobs-module M ...] RUN_ID`` is
what the local scheduler starts for each run (one process per run); the Ray
executor calls :func:`execute_run` inside a Ray task.  Either way the worker

1. imports the trusted job modules it was given by the process that started it
   (plus :data:`~pitune_core.runs.jobs.DEFAULT_JOB_MODULES`) -- never a name
   read from the database,
2. records itself (pid, host) on the claimed run (or claims it, for Ray),
3. looks the run's kind up in the kinds those modules registered and calls the
   job; a kind nobody registered fails the run with a one-line error (the
   ``target`` column of old databases is ignored),
4. records the outcome: metrics -> ``succeeded``; an exception -> ``failed``
   with the full traceback in ``log.txt`` and ``error.txt``; a cancel ->
   ``cancelled``; SIGTERM without a cancel request -> ``interrupted``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Mapping
from typing import Iterable, Iterator

from pitune_core.common import num_threads_from_env

from .jobs import (
    DEFAULT_JOB_MODULES,
    THREAD_ENV_VARS,
    RunCancelled,
    RunContext,
    UnknownJobKindError,
    WorkerTerminated,
    get_job,
    import_job_modules,
    thread_env,
)
from .registry import (
    CANCELLED,
    FAILED,
    HOSTNAME,
    INTERRUPTED,
    SUCCEEDED,
    RunRegistry,
    to_jsonable,
    validate_run_id,
)

__all__ = ["execute_run", "apply_thread_limits", "THREAD_ENV_VARS", "main"]

EXIT_CODES = {SUCCEEDED: 0, FAILED: 1, CANCELLED: 3, INTERRUPTED: 4}


def apply_thread_limits(num_threads: int) -> int:
    """Cap threads in *this* process (env for libraries loaded later, torch now)."""
    n = max(1, int(num_threads))
    os.environ.update(thread_env(n))
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            torch.set_num_threads(n)
        except Exception:
            pass
    return n


def _threads_for(record_resources: dict, num_threads: int | None) -> int:
    if num_threads:
        return int(num_threads)
    env = num_threads_from_env()
    if env is not None:
        return env
    cpus = record_resources.get("num_cpus")
    if cpus:
        return max(1, int(cpus))
    return 1


class _Heartbeat(threading.Thread):
    def __init__(self, registry: RunRegistry, run_id: str, interval: float) -> None:
        super().__init__(name=f"pitune-heartbeat-{run_id}", daemon=True)
        self.registry, self.run_id, self.interval = registry, run_id, interval
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(self.interval):
            try:
                if not self.registry.heartbeat(self.run_id):
                    return
            except Exception:
                pass


@contextlib.contextmanager
def _capture_output(log_path: str) -> Iterator[None]:
    """Send Python-level stdout/stderr of the job to the run log (used under Ray)."""
    with open(log_path, "a", encoding="utf-8", buffering=1) as fh:
        with contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
            yield


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one is enough; SIGKILL follows if we hang
        raise WorkerTerminated(f"worker received signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Refused(Exception):
    """A run whose config its kind's validator refuses in the worker (one line, no traceback)."""


def execute_run(
    db_path: str | os.PathLike[str],
    run_id: str,
    *,
    claim: bool = False,
    num_threads: int | None = None,
    install_signal_handlers: bool = False,
    capture_output: bool = False,
    heartbeat_interval: float | None = None,
    progress_interval: float = 0.5,
    job_modules: Iterable[str] = (),
    on_progress: Callable[[dict], None] | None = None,
) -> str:
    """Run ``run_id`` in this process and record its outcome; returns the final status.

    ``claim=True`` first claims the run (queued -> running) -- used by Ray tasks;
    the local scheduler claims runs itself before starting a worker.  If the run
    is not claimable / not running any more (e.g. cancelled while waiting), the
    job is not executed and the run's current status is returned.

    ``job_modules`` name the trusted modules that register job kinds (given by the
    process that started this worker); :data:`DEFAULT_JOB_MODULES` are always
    imported.  A kind none of them registered fails the run, importing nothing.
    ``on_progress`` hears each progress report of the job as it is made (a run executed in the
    foreground shows them itself).
    """
    validate_run_id(run_id)
    registry = RunRegistry(db_path)
    try:
        if claim and registry.claim(run_id) is None:
            return registry.get(run_id).status
        record = registry.mark_started(run_id)
        if record is None:
            return registry.get(run_id).status
        if record.cancel_requested:
            registry.finish(run_id, CANCELLED, error="cancelled before the job started")
            return registry.get(run_id).status
        if record.run_dir.is_symlink() or not record.run_dir.is_dir():  # a job never writes through a link
            registry.finish(run_id, FAILED, error=f"run directory {record.run_dir} is missing or not a plain "
                                                  "directory inside the registry; the job was not started")
            return registry.get(run_id).status

        threads = apply_thread_limits(_threads_for(record.resources, num_threads))
        ctx = RunContext(registry, record, num_threads=threads, progress_interval=progress_interval,
                         listener=on_progress)
        ctx.log(
            f"==== run {run_id} kind={record.kind} attempt={record.attempt} "
            f"pid={os.getpid()} host={HOSTNAME} threads={threads} ===="
        )
        interval = heartbeat_interval or float(os.environ.get("PITUNE_HEARTBEAT_S", "15"))
        beat = _Heartbeat(registry, run_id, interval)
        beat.start()
        status, metrics, error, details = FAILED, None, None, None
        try:
            with contextlib.ExitStack() as stack:
                if install_signal_handlers:
                    stack.enter_context(_sigterm_raises())
                if capture_output:
                    stack.enter_context(_capture_output(str(record.log_path)))
                try:
                    import_job_modules(dict.fromkeys([*DEFAULT_JOB_MODULES, *job_modules]))
                    job = get_job(record.kind)
                    if job.validate is not None:  # the worker re-validates: a row may be stale or written by hand
                        try:
                            job.validate(dict(record.config))
                        except ValueError as exc:
                            raise _Refused(str(exc)) from None
                    result = job.fn(dict(record.config), ctx)
                    if result is None:
                        result = {}
                    if not isinstance(result, Mapping):
                        raise TypeError(f"job returned {type(result).__name__}; a job must return a dict of metrics")
                    metrics = to_jsonable(dict(result))
                    status = SUCCEEDED
                except _Refused as exc:
                    status, error = FAILED, f"refused before the job started: {exc}"
                except UnknownJobKindError as exc:
                    status = FAILED
                    error = f"{exc} (this worker runs only kinds registered in code; nothing was imported for it)"
                except RunCancelled as exc:
                    status, error = CANCELLED, str(exc) or "cancelled"
                except (WorkerTerminated, KeyboardInterrupt) as exc:
                    # SIGTERM from the scheduler after a cancel (or ray.cancel) -> cancelled;
                    # otherwise (shutdown, Ctrl-C) the run can be resumed -> interrupted.
                    what = "KeyboardInterrupt" if isinstance(exc, KeyboardInterrupt) else str(exc)
                    if registry.is_cancel_requested(run_id):
                        status, error = CANCELLED, f"cancelled ({what})"
                    else:
                        status, error = INTERRUPTED, f"interrupted: {what}"
                except BaseException as exc:  # noqa: BLE001 - record *every* failure
                    status = FAILED
                    error = f"{type(exc).__name__}: {exc}"
                    details = traceback.format_exc()
        finally:
            beat.stop_event.set()
        try:
            ctx.flush()
        except Exception:
            pass
        if details:
            ctx.log("job failed with an exception:\n" + details.rstrip())
        ctx.log(f"==== {status}" + (f": {error}" if error and status != FAILED else "") + " ====")
        registry.finish(run_id, status, metrics=metrics, error=error, details=details)
        return registry.get(run_id).status
    finally:
        registry.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pitune_core.runs.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="path of the run registry database")
    parser.add_argument("--claim", action="store_true", help="claim the queued run first")
    parser.add_argument("--jobs-module", action="append", default=[], metavar="MODULE",
                        help="a trusted module that registers job kinds when imported (repeatable)")
    parser.add_argument("run_id")
    args = parser.parse_args(argv)
    try:
        status = execute_run(args.db, args.run_id, claim=args.claim, install_signal_handlers=True,
                             job_modules=args.jobs_module)
    except (ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return EXIT_CODES.get(status, 0)


if __name__ == "__main__":
    sys.exit(main())
