"""Ray executor: runs registry runs as Ray tasks (optional dependency).

Ray is imported lazily; without it, constructing a :class:`RayExecutor` raises
:class:`RayNotInstalledError` with the install command.  Each run becomes one
``@ray.remote`` task (``max_retries=0``: a crashed run is recorded as failed,
never silently re-executed) with the run's resources (``num_cpus`` default 1,
``num_gpus``, ``memory``, custom ``resources``).  The task executes the same
code path as a local worker (:func:`pitune_core.runs.worker.execute_run`),
writing progress and the outcome straight to the registry, so the database
must live on a path every Ray worker can open (for several nodes, a shared
file system and ``journal_mode="delete"``; see :mod:`.registry`).  The task is
told which trusted modules register job kinds (the driver's
:func:`~pitune_core.runs.jobs.worker_job_modules`, a task argument, never read
from the database), so those modules must be importable on every Ray worker.

The run is claimed (queued -> running) by the task itself when Ray starts it,
so runs waiting for a free CPU show as ``queued``.  Tasks are owned by the
driver process that submitted them: if it exits, Ray stops them (their runs
become ``interrupted`` on the next ``recover_interrupted``) and runs still
waiting stay ``queued`` until :meth:`RayExecutor.launch_pending` is called.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .jobs import worker_job_modules
from .registry import CANCELLED, FAILED, FINAL_STATUSES, QUEUED, RUNNING, RunRecord, RunRegistry, validate_run_id
from pitune_core.runs.worker import execute_run
import pitune_core

__all__ = ["RayExecutor", "RayNotInstalledError", "import_ray", "init_ray", "RAY_VERSION", "RAY_INSTALL_HINT"]

RAY_VERSION = "2.60.0"
RAY_INSTALL_HINT = f"pip install 'ray[default]=={RAY_VERSION}'   (or: pip install 'pitune[ray]')"


class RayNotInstalledError(ImportError):
    pass


def import_ray() -> Any:
    """Import Ray or raise :class:`RayNotInstalledError` with the install command."""
    try:
        import ray
    except ImportError as exc:
        raise RayNotInstalledError(
            "The Ray executor needs Ray, an optional dependency of pitune that is not installed.\n"
            f"Install it with:  {RAY_INSTALL_HINT}\n"
            "(The local executor, pitune_core.runs.executor, works without Ray.)"
        ) from exc
    return ray


def _pitune_importable_without_cwd() -> bool:
    """Can a fresh interpreter (as Ray starts its workers) import pitune_core?"""
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(
            [sys.executable, "-c", "import pitune_core"], cwd=tmp, capture_output=True, timeout=60
        )
    return proc.returncode == 0


def init_ray(
    address: str | None = None,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    **init_kwargs: Any,
) -> bool:
    """``ray.init`` unless Ray is already initialised; True if this call started it.

    With ``address=None`` a local Ray instance is started (no dashboard); if
    pitune is not installed (only importable from the current directory), its
    location is put on the workers' PYTHONPATH through the job's runtime_env.
    """
    ray = import_ray()
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = dict(init_kwargs)
    if address is None:
        kwargs.setdefault("include_dashboard", False)
        if num_cpus is not None:
            kwargs["num_cpus"] = num_cpus
        if num_gpus is not None:
            kwargs["num_gpus"] = num_gpus
        if "runtime_env" not in kwargs and not _pitune_importable_without_cwd():
            parent = str(Path(pitune_core.__file__).resolve().parent.parent)
            path = os.pathsep.join(p for p in (parent, os.environ.get("PYTHONPATH", "")) if p)
            kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": path}}
    else:
        kwargs["address"] = address
    ray.init(**kwargs)
    return True


def _run_in_ray(db_path: str, run_id: str, num_threads: int, job_modules: Sequence[str] = ()) -> str:
    """Body of the Ray task: the local worker's code path, claiming the run first."""
    return execute_run(db_path, run_id, claim=True, num_threads=num_threads, capture_output=True,
                       job_modules=job_modules)


_REMOTE: Any = None


def _remote() -> Any:
    global _REMOTE
    if _REMOTE is None:
        ray = import_ray()
        _REMOTE = ray.remote(max_retries=0)(_run_in_ray)
    return _REMOTE


def ray_options(resources: Mapping[str, Any], run_id: str) -> tuple[dict[str, Any], int]:
    """Ray task options for a run's resources, and the thread cap for its job."""
    num_cpus = float(resources.get("num_cpus", 1) or 0)
    opts: dict[str, Any] = {"num_cpus": num_cpus, "max_retries": 0, "name": f"pitune-run-{run_id}"}
    if resources.get("num_gpus"):
        opts["num_gpus"] = float(resources["num_gpus"])
    if resources.get("memory"):
        opts["memory"] = int(resources["memory"])
    custom = resources.get("resources") or resources.get("custom")
    if custom:
        opts["resources"] = {str(k): float(v) for k, v in dict(custom).items()}
    return opts, max(1, int(num_cpus))


class RayExecutor:
    """Submit registry runs as Ray tasks and track them.

    ``address=None`` starts a local Ray instance on demand (with ``num_cpus``);
    an already-initialised Ray session is reused and left running on
    :meth:`shutdown`.
    """

    def __init__(
        self,
        registry: RunRegistry,
        address: str | None = None,
        num_cpus: float | None = None,
        *,
        num_gpus: float | None = None,
        cancel_grace: float = 10.0,
        kill_grace: float = 5.0,
        init_kwargs: Mapping[str, Any] | None = None,
        job_modules: Iterable[str] = (),
    ) -> None:
        self.registry = registry
        self.job_modules = list(job_modules)
        self.ray = import_ray()
        self.cancel_grace = float(cancel_grace)
        self.kill_grace = float(kill_grace)
        self._owns_ray = init_ray(address, num_cpus, num_gpus, **dict(init_kwargs or {}))
        self._refs: dict[str, Any] = {}  # run id -> ObjectRef, until collected
        self._cancel_seen: dict[str, float] = {}
        self._soft_cancelled: set[str] = set()
        self._force_cancelled: set[str] = set()

    # ---------------------------------------------------------------- submit

    def submit(
        self,
        kind: str,
        config: Mapping[str, Any] | None = None,
        name: str | None = None,
        resources: Mapping[str, Any] | None = None,
        *,
        priority: int = 0,
    ) -> str:
        run_id = self.registry.submit(kind, config, name, resources, priority=priority, executor="ray")
        self.launch(run_id)
        return run_id

    def submit_many(self, specs: Iterable[Mapping[str, Any]]) -> list[str]:
        """Submit several runs; each spec is a dict with ``kind``, ``config`` and
        optional ``name``, ``resources``, ``priority``. Returns the run ids."""
        specs = list(specs)
        ids = [
            self.registry.submit(
                s["kind"],
                s.get("config"),
                s.get("name"),
                s.get("resources"),
                priority=s.get("priority", 0),
                executor="ray",
            )
            for s in specs
        ]
        for run_id in ids:
            self.launch(run_id)
        return ids

    def map(
        self,
        kind: str,
        configs: Iterable[Mapping[str, Any]],
        *,
        names: Sequence[str | None] | None = None,
        resources: Mapping[str, Any] | None = None,
    ) -> list[str]:
        """One run of ``kind`` per config (e.g. every pair of a transfer study)."""
        configs = list(configs)
        names = list(names) if names is not None else [None] * len(configs)
        if len(names) != len(configs):
            raise ValueError("names and configs differ in length")
        return self.submit_many(
            {"kind": kind, "config": c, "name": n, "resources": resources} for c, n in zip(configs, names)
        )

    def launch(self, run_id: str) -> None:
        """Start a Ray task for a queued ``ray`` run (submitted earlier or resumed)."""
        record = self.registry.get(run_id)
        if record.status != QUEUED:
            raise ValueError(f"run {run_id} is {record.status}, not queued")
        if record.executor != "ray":
            raise ValueError(f"run {run_id} belongs to the {record.executor} executor")
        if run_id in self._refs:
            return
        opts, threads = ray_options(record.resources, run_id)
        modules = worker_job_modules(self.job_modules)
        self._refs[run_id] = _remote().options(**opts).remote(str(self.registry.db_path), run_id, threads, modules)

    def launch_pending(self) -> list[str]:
        """Launch every queued ``ray`` run not yet launched here (e.g. after a driver restart)."""
        pending = [
            r.id for r in self.registry.list_runs(status=QUEUED, executor="ray", oldest_first=True)
            if r.id not in self._refs
        ]
        for run_id in pending:
            self.launch(run_id)
        return pending

    def resume(self, run_id: str) -> str:
        record = self.registry.get(run_id)
        if record.executor != "ray":
            raise ValueError(f"run {run_id} belongs to the {record.executor} executor")
        self._refs.pop(run_id, None)
        self.registry.resume(run_id)
        self.launch(run_id)
        return run_id

    # ---------------------------------------------------------------- cancel

    def cancel(self, run_id: str) -> RunRecord:
        """Request a cancel; a waiting task is dropped from Ray's queue at once."""
        record = self.registry.request_cancel(run_id)
        ref = self._refs.get(run_id)
        if ref is not None and record.status == CANCELLED:
            try:
                self.ray.cancel(ref, force=False)
            except Exception:
                pass
        return record

    def _enforce_cancels(self) -> None:
        if not self._refs:
            return
        now = time.time()
        records = self.registry.get_many(self._refs)
        for run_id, ref in list(self._refs.items()):
            rec = records.get(run_id)
            if rec is None or rec.status != RUNNING or not rec.cancel_requested:
                continue
            seen = self._cancel_seen.setdefault(run_id, now)
            if run_id not in self._soft_cancelled and now - seen >= self.cancel_grace:
                # KeyboardInterrupt in the task; execute_run records it as cancelled
                self._soft_cancelled.add(run_id)
                self.registry.append_log(rec.log_path, "[ray] job ignored the cancel request: ray.cancel()")
                self.ray.cancel(ref, force=False)
            elif (
                run_id in self._soft_cancelled
                and run_id not in self._force_cancelled
                and now - seen >= self.cancel_grace + self.kill_grace
            ):
                self._force_cancelled.add(run_id)
                self.registry.append_log(rec.log_path, "[ray] still running: ray.cancel(force=True)")
                self.ray.cancel(ref, force=True)

    # ------------------------------------------------------------------ wait

    def _collect(self, run_id: str, ref: Any) -> None:
        self._refs.pop(run_id, None)
        self._cancel_seen.pop(run_id, None)
        try:
            self.ray.get(ref)
            return  # the task recorded the outcome itself
        except Exception as exc:  # task cancelled, worker crashed, pitune import error in the worker...
            failure = exc
        try:
            record = self.registry.get(run_id)
        except KeyError:
            return
        if record.status not in (RUNNING, QUEUED):
            return
        first_line = (str(failure).strip().splitlines() or [""])[0]
        what = f"ray task failed ({type(failure).__name__}): {first_line}"
        if record.cancel_requested:
            status, error = CANCELLED, f"cancelled: {what}"
        else:
            status, error = FAILED, what
        if self.registry.finish(run_id, status, error=error, details=str(failure), only_if=(RUNNING, QUEUED)):
            self.registry.append_log(record.log_path, f"[ray] {error}")

    def poll(self, timeout: float = 0.0) -> None:
        """Collect finished tasks and enforce cancels (non-blocking by default)."""
        if self._refs:
            by_ref = {ref: run_id for run_id, ref in self._refs.items()}
            ready, _ = self.ray.wait(list(by_ref), num_returns=len(by_ref), timeout=timeout)
            for ref in ready:
                self._collect(by_ref[ref], ref)
        self._enforce_cancels()

    def wait(
        self,
        run_ids: Iterable[str] | None = None,
        timeout: float | None = None,
        *,
        poll_interval: float = 0.1,
    ) -> dict[str, RunRecord]:
        """Block until the runs (default: all launched here) are final; return their records."""
        ids = [validate_run_id(r) for r in (list(run_ids) if run_ids is not None else list(self._refs))]
        deadline = None if timeout is None else time.time() + timeout
        while True:
            if self._refs:
                self.poll(timeout=poll_interval)
            else:
                time.sleep(poll_interval)
            records = self.registry.get_many(ids)
            pending = [r for r in ids if r not in records or records[r].status not in FINAL_STATUSES]
            if not pending:
                return {r: records[r] for r in ids}
            if deadline is not None and time.time() >= deadline:
                raise TimeoutError(f"{len(pending)} ray run(s) not finished after {timeout}s: {pending[:5]}")

    # -------------------------------------------------------------- shutdown

    def shutdown(self) -> None:
        """Forget tracked tasks; stop Ray if this executor started it."""
        self._refs.clear()
        if self._owns_ray and self.ray.is_initialized():
            self.ray.shutdown()
        self._owns_ray = False

    def __enter__(self) -> "RayExecutor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
