"""Durable runs: a sqlite run registry, job kinds, and local / Ray executors.

Importing this package never imports torch or Ray. With ``RunRegistry`` and ``ensure_scheduler`` imported
from here, and :mod:`pitune_core.jobs` imported (which registers the real kinds: transfer, ...)::

    registry = RunRegistry()                  # $PITUNE_RUNS_DB or ./runs/registry.sqlite
    run_id = registry.submit("transfer", {"target": "rt_polarity"}, name="my first run")
    ensure_scheduler(registry.db_path)       # detached scheduler; or run_until_idle(registry)
    registry.get(run_id).status               # queued -> running -> succeeded

The package is generic: it ships no job kind.  Kinds are registered in code
(:func:`register_job`) by modules that workers import by name; a registry row
only names its kind, and a worker runs nothing else (see :mod:`.jobs`).

Executor names are loaded on first use (so that ``python -m
pitune_core.runs.worker`` / ``.executor`` do not import themselves twice);
``RayExecutor`` needs the optional ``ray`` dependency.
"""

from __future__ import annotations

import importlib
from typing import Any

from .jobs import (
    RunCancelled,
    RunContext,
    UnknownJobKindError,
    job_kinds,
    register_job,
    unregister_job,
    validate_job_config,
)
from .registry import (
    FINAL_STATUSES,
    SCHEMA_VERSION,
    STATUSES,
    TERMINAL_STATUSES,
    RegistryUnavailableError,
    RunNotFoundError,
    RunRecord,
    RunRegistry,
    is_valid_run_id,
    validate_run_id,
)

_LAZY = {
    "LocalScheduler": "executor",
    "ensure_scheduler": "executor",
    "scheduler_running": "executor",
    "run_until_idle": "executor",
    "wait": "executor",
    "default_max_parallel": "executor",
    "execute_run": "worker",
    "RayExecutor": "ray_executor",
    "RayNotInstalledError": "ray_executor",
}

__all__ = [
    "RunRegistry",
    "RunRecord",
    "RunNotFoundError",
    "RegistryUnavailableError",
    "UnknownJobKindError",
    "validate_job_config",
    "RunContext",
    "RunCancelled",
    "register_job",
    "unregister_job",
    "job_kinds",
    "STATUSES",
    "TERMINAL_STATUSES",
    "FINAL_STATUSES",
    "SCHEMA_VERSION",
    "validate_run_id",
    "is_valid_run_id",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
