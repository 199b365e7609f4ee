"""Job kinds: the allow-list of what a worker may run, and the context a job runs with.

A job is ``fn(config: dict, ctx: RunContext) -> dict`` (the returned dict is the run's metrics).
Kinds are registered *in code* with :func:`register_job`; the registry stores only a run's kind
(a name), and a worker resolves that name against its own in-process table. Nothing read from the
database is ever imported: a row whose kind is not registered fails with a one-line error.

How a worker process learns the kinds: the process that starts workers (the local scheduler, the
detached scheduler, a Ray driver) passes the names of the modules that registered them -- those of
the functions in its own table (:func:`job_modules`), plus :data:`DEFAULT_JOB_MODULES` -- on the
worker's command line (``--jobs-module``) or as a Ray task argument; the worker imports those
modules (each registers its kinds when imported) and nothing else. The trust boundary is therefore
the command line of a process we started, never a registry row. So a job module must register its
kinds at import time, and a job function must live at module level in an importable module (not
``__main__``); :func:`register_job` checks the latter.

This module must stay light: standard library only at import time (the dashboard imports it).
"""

from __future__ import annotations

import importlib
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from pitune_core.common import NUM_THREADS_ENV, num_threads_from_env

if TYPE_CHECKING:
    from .registry import RunRecord, RunRegistry

__all__ = [
    "RunContext",
    "RunCancelled",
    "WorkerTerminated",
    "JobKind",
    "UnknownJobKindError",
    "register_job",
    "unregister_job",
    "job_kinds",
    "get_job",
    "validate_job_config",
    "job_modules",
    "worker_job_modules",
    "import_job_modules",
    "DEFAULT_JOB_MODULES",
    "THREAD_ENV_VARS",
    "thread_env",
]

#: Environment variables that cap the threads of torch / BLAS / OpenMP in a process.
THREAD_ENV_VARS = (
    NUM_THREADS_ENV,
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)

#: Modules every worker imports: the application's real job kinds (imported by name, so this
#: generic package never imports them itself; their import is light -- ML code loads inside jobs).
DEFAULT_JOB_MODULES: tuple[str, ...] = ("pitune_core.jobs",)

KIND_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def thread_env(num_threads: int) -> dict[str, str]:
    """Environment variables that cap BLAS/OpenMP/torch threads of a process."""
    n = str(max(1, int(num_threads)))
    return {var: n for var in THREAD_ENV_VARS}


@dataclass(frozen=True)
class JobKind:
    """A registered kind: the job function and an optional config validator.

    ``validate(config)`` raises ``ValueError`` (one readable line) for a config the job would
    refuse; :meth:`RunRegistry.submit` calls it, so a bad run is refused before it is queued.
    """

    name: str
    fn: Callable[[dict, "RunContext"], Any]
    validate: Callable[[dict], Any] | None = None

    @property
    def module(self) -> str:
        return self.fn.__module__

    @property
    def qualname(self) -> str:
        return f"{self.fn.__module__}:{self.fn.__qualname__}"


class UnknownJobKindError(ValueError):
    """A kind that no trusted module registered in this process."""


_JOBS: dict[str, JobKind] = {}
_LOCK = threading.Lock()


class RunCancelled(BaseException):
    """Raised by :meth:`RunContext.check_cancelled` when a cancel was requested.

    A ``BaseException`` (like ``KeyboardInterrupt``) so that a job's broad
    ``except Exception`` does not swallow it.
    """


class WorkerTerminated(BaseException):
    """The worker process got SIGTERM without a cancel request (e.g. shutdown)."""


def register_job(
    kind: str,
    fn: Callable[[dict, "RunContext"], Any],
    *,
    validate: Callable[[dict], Any] | None = None,
    overwrite: bool = True,
) -> None:
    """Allow ``kind``: runs of it call ``fn(config, ctx)``; ``validate(config)`` checks a config at submit.

    ``fn`` must be a module-level function of an importable module, and that module must register
    it when imported (worker processes import the module to learn the kind).
    """
    if not isinstance(kind, str) or not KIND_RE.fullmatch(kind):
        raise ValueError(f"job kind must be a short name of letters, digits, '-', '_' or '.', not {kind!r}")
    if isinstance(fn, str) or not callable(fn):
        raise TypeError(f"register the job function itself, not {fn!r} (workers never import paths)")
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not module or module == "__main__" or "<" in qualname:
        raise ValueError(
            f"job function {qualname or fn!r} must be defined at module level in an importable module "
            f"(not {module!r}): worker processes import that module to learn the kind"
        )
    if validate is not None and not callable(validate):
        raise TypeError("validate must be callable")
    with _LOCK:
        old = _JOBS.get(kind)
        if not overwrite and old is not None and old.fn is not fn:
            raise ValueError(f"job kind {kind!r} is already registered as {old.qualname}")
        _JOBS[kind] = JobKind(kind, fn, validate)


def unregister_job(kind: str) -> None:
    with _LOCK:
        _JOBS.pop(kind, None)


def job_kinds() -> dict[str, str]:
    """Registered kinds -> ``"module:function"`` (for display)."""
    with _LOCK:
        return {k: j.qualname for k, j in sorted(_JOBS.items())}


_DEFAULTS_LOADED = False


def _load_default_modules() -> None:
    """Import :data:`DEFAULT_JOB_MODULES` once, so that every process knows the application's kinds."""
    global _DEFAULTS_LOADED
    if not _DEFAULTS_LOADED:
        _DEFAULTS_LOADED = True
        import_job_modules(DEFAULT_JOB_MODULES)


def get_job(kind: object) -> JobKind:
    """The registered kind, or :class:`UnknownJobKindError` naming the registered ones.

    The kinds of :data:`DEFAULT_JOB_MODULES` are always known (imported on the first miss).
    """
    with _LOCK:
        job = _JOBS.get(kind) if isinstance(kind, str) else None
    if job is None:
        _load_default_modules()
    with _LOCK:
        job = _JOBS.get(kind) if isinstance(kind, str) else None
        known = sorted(_JOBS)
    if job is None:
        shown = repr(kind) if len(repr(kind)) <= 60 else repr(kind)[:57] + "..."
        raise UnknownJobKindError(
            f"unknown job kind {shown}; registered kinds: {', '.join(known) or 'none'}"
        )
    return job


def validate_job_config(kind: str, config: Mapping[str, Any]) -> None:
    """Run the kind's validator (if any) on ``config``; raises ``ValueError`` for a bad one."""
    job = get_job(kind)
    if job.validate is not None:
        job.validate(dict(config))


def job_modules() -> list[str]:
    """The modules whose functions are registered in this process (sorted, unique)."""
    with _LOCK:
        return sorted({j.module for j in _JOBS.values()})


def worker_job_modules(extra: Iterable[str] = ()) -> list[str]:
    """What a worker started by this process must import: the defaults, this process's job
    modules and ``extra`` (in that order, without repeats)."""
    out: list[str] = []
    for name in (*DEFAULT_JOB_MODULES, *job_modules(), *extra):
        if name not in out:
            out.append(name)
    return out


def import_job_modules(names: Iterable[str]) -> list[str]:
    """Import trusted job modules by name (each registers its kinds); returns the names.

    The names come from the command line of a process we started, never from the database.
    """
    done = []
    for name in names:
        if not isinstance(name, str) or not MODULE_RE.fullmatch(name):
            raise ValueError(f"not a module name: {name!r}")
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ImportError(f"cannot import job module {name!r}: {exc}") from exc
        done.append(name)
    return done


def _num(x: Any) -> Any:
    if x is None or isinstance(x, (int, float, str, bool)):
        return x
    if hasattr(x, "item"):
        try:
            return x.item()
        except (TypeError, ValueError):
            pass
    return float(x)


class RunContext:
    """What a job sees of its run.

    ``progress`` writes to the registry at most every ``progress_interval``
    seconds (a new stage, or the last step, is written at once); ``is_cancelled``
    looks at the registry at most every ``cancel_poll_interval`` seconds.
    """

    def __init__(
        self,
        registry: "RunRegistry",
        record: "RunRecord",
        *,
        progress_interval: float = 0.5,
        cancel_poll_interval: float = 0.25,
        num_threads: int | None = None,
        listener: Callable[[dict], None] | None = None,
    ) -> None:
        self.registry = registry
        self.listener = listener  # hears every progress report as it is made (a foreground CLI's bars)
        self.record = record
        self.run_id: str = record.id
        self.run_dir: Path = Path(record.run_dir)
        self.log_path: Path = Path(record.log_path)
        self.config: dict = dict(record.config)
        self.kind: str = record.kind
        self.attempt: int = record.attempt
        self.resources: dict = dict(record.resources)
        self.num_threads: int = int(num_threads or num_threads_from_env() or 1)
        self.progress_interval = float(progress_interval)
        self.cancel_poll_interval = float(cancel_poll_interval)
        self.started = time.time()
        self._last_write = 0.0
        self._last_stage: str | None = None
        self._stage: tuple[str | None, float] = (None, self.started)  # the stage being reported, since when
        self._pending: dict | None = None
        self._cancelled = False
        self._last_cancel_poll = 0.0
        self._terminated = False
        self._lock = threading.Lock()

    # ------------------------------------------------------------- progress

    def progress(
        self,
        stage: str,
        step: int | None = None,
        total: int | None = None,
        loss: float | None = None,
        **extra: Any,
    ) -> None:
        data: dict[str, Any] = {"stage": str(stage), "step": _num(step), "total": _num(total), "loss": _num(loss)}
        now = time.time()
        data["elapsed"] = round(now - self.started, 3)
        if stage != self._stage[0]:
            self._stage = (stage, now)
        data["stage_elapsed"] = round(now - self._stage[1], 3)  # for the stage's own rate and ETA
        for key, value in extra.items():
            data[key] = value
        if self.listener is not None:
            self.listener(dict(data))
        now = time.time()
        urgent = stage != self._last_stage or (step is not None and total is not None and step >= total)
        with self._lock:
            self._pending = data
            if urgent or now - self._last_write >= self.progress_interval:
                self._flush_locked(now)

    def flush(self) -> None:
        with self._lock:
            self._flush_locked(time.time())

    def _flush_locked(self, now: float) -> None:
        if self._pending is None:
            return
        data, self._pending = self._pending, None
        self._last_write = now
        self._last_stage = data.get("stage")
        self.registry.set_progress(self.run_id, data)

    # ------------------------------------------------------------------ log

    def log(self, msg: str) -> None:
        self.registry.append_log(self.log_path, msg)

    # ---------------------------------------------------------- cancellation

    def is_cancelled(self) -> bool:
        if self._cancelled:
            return True
        now = time.time()
        if now - self._last_cancel_poll >= self.cancel_poll_interval:
            self._last_cancel_poll = now
            try:
                self._cancelled = self.registry.is_cancel_requested(self.run_id)
            except Exception:  # a busy/locked db must not kill the job
                pass
        return self._cancelled

    def check_cancelled(self) -> None:
        if self.is_cancelled():
            raise RunCancelled(f"run {self.run_id} was cancelled")
