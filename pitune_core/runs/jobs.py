"""Job kinds and the context a job runs with.

A job is ``fn(config: dict, ctx: RunContext) -> dict`` (the returned dict is the
run's metrics).  Kinds map to *import path strings* (``"module:function"``)
which are only imported inside the worker process, so the dashboard, the CLI
and the registry never import torch.  The target string is stored with each run
at submit time, so a kind registered at runtime (``register_job``) in the
submitting process works in any worker, local or Ray.

This module must stay light: standard library only at import time.
"""

from __future__ import annotations

import importlib
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .registry import RunRecord, RunRegistry

__all__ = [
    "RunContext",
    "RunCancelled",
    "WorkerTerminated",
    "register_job",
    "unregister_job",
    "job_kinds",
    "resolve_target",
    "load_job",
    "BUILTIN_JOBS",
    "THREAD_ENV_VARS",
    "thread_env",
]

#: Environment variables that cap the threads of torch / BLAS / OpenMP in a process.
THREAD_ENV_VARS = (
    "PITUNE_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)


def thread_env(num_threads: int) -> dict[str, str]:
    """Environment variables that cap BLAS/OpenMP/torch threads of a process."""
    n = str(max(1, int(num_threads)))
    return {var: n for var in THREAD_ENV_VARS}

#: Built-in kinds.  Real kinds are added with :func:`register_job`.
BUILTIN_JOBS: dict[str, str] = {
    "noop": "pitune_core.runs.jobs:noop_job",
    "sleep": "pitune_core.runs.jobs:sleep_job",
    "fail": "pitune_core.runs.jobs:fail_job",
    "toy-train": "pitune_core.runs.jobs:toy_train_job",
    # the real ML jobs (imported only inside workers; registered again by pitune_core.jobs)
    "transfer": "pitune_core.jobs:transfer_job",
    "train-expert": "pitune_core.jobs:train_expert_job",
    "transfer-pair": "pitune_core.jobs:transfer_pair_job",
}
_JOBS: dict[str, str] = dict(BUILTIN_JOBS)
_LOCK = threading.Lock()


class RunCancelled(BaseException):
    """Raised by :meth:`RunContext.check_cancelled` when a cancel was requested.

    A ``BaseException`` (like ``KeyboardInterrupt``) so that a job's broad
    ``except Exception`` does not swallow it.
    """


class WorkerTerminated(BaseException):
    """The worker process got SIGTERM without a cancel request (e.g. shutdown)."""


def register_job(kind: str, target: str, *, overwrite: bool = True) -> None:
    """Map ``kind`` to ``"package.module:function"`` (imported lazily by workers)."""
    if not isinstance(target, str) or target.count(":") != 1:
        raise ValueError(f"job target must be a 'module:function' string, not {target!r}")
    with _LOCK:
        if not overwrite and kind in _JOBS and _JOBS[kind] != target:
            raise ValueError(f"job kind {kind!r} is already registered as {_JOBS[kind]!r}")
        _JOBS[kind] = target


def unregister_job(kind: str) -> None:
    with _LOCK:
        _JOBS.pop(kind, None)


def job_kinds() -> dict[str, str]:
    with _LOCK:
        return dict(_JOBS)


def resolve_target(kind: str) -> str:
    with _LOCK:
        target = _JOBS.get(kind)
    if target is None:
        raise ValueError(f"unknown job kind {kind!r}; registered kinds: {', '.join(sorted(job_kinds()))}")
    return target


def load_job(target: str) -> Callable[[dict, "RunContext"], Any]:
    """Import ``"module:function"`` and return the function."""
    module_name, _, func_name = target.partition(":")
    module = importlib.import_module(module_name)
    try:
        fn = getattr(module, func_name)
    except AttributeError:
        raise ImportError(f"module {module_name!r} has no attribute {func_name!r} (job target {target!r})") from None
    if not callable(fn):
        raise TypeError(f"job target {target!r} is not callable")
    return fn


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
    ) -> None:
        self.registry = registry
        self.record = record
        self.run_id: str = record.id
        self.run_dir: Path = Path(record.run_dir)
        self.log_path: Path = Path(record.log_path)
        self.config: dict = dict(record.config)
        self.kind: str = record.kind
        self.attempt: int = record.attempt
        self.resources: dict = dict(record.resources)
        self.num_threads: int = int(num_threads or os.environ.get("PITUNE_NUM_THREADS") or 1)
        self.progress_interval = float(progress_interval)
        self.cancel_poll_interval = float(cancel_poll_interval)
        self.started = time.time()
        self._last_write = 0.0
        self._last_stage: str | None = None
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
        data["elapsed"] = round(time.time() - self.started, 3)
        for key, value in extra.items():
            data[key] = value
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


# ------------------------------------------------------------------ built-ins


def noop_job(config: dict, ctx: RunContext) -> dict:
    """Does nothing (used to measure executor overhead); reports its thread caps."""
    env = {k: os.environ.get(k) for k in ("PITUNE_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    return {"ok": True, "num_threads": ctx.num_threads, "env": env}


def sleep_job(config: dict, ctx: RunContext) -> dict:
    """``steps`` steps of ``seconds_per_step``; progress each step, cooperative cancel.

    ``ignore_cancel: true`` makes it ignore cancellation (to test forced stops).
    """
    steps = int(config.get("steps", 10))
    dt = float(config.get("seconds_per_step", 0.1))
    ignore_cancel = bool(config.get("ignore_cancel", False))
    ctx.log(f"sleep: {steps} steps x {dt}s")
    for i in range(steps):
        if not ignore_cancel:
            ctx.check_cancelled()
        time.sleep(dt)
        ctx.progress("sleep", step=i + 1, total=steps)
    return {"steps": steps, "slept": round(steps * dt, 6)}


def fail_job(config: dict, ctx: RunContext) -> dict:
    """Raises ``RuntimeError(message)`` after ``steps`` steps."""
    steps = int(config.get("steps", 0))
    dt = float(config.get("seconds_per_step", 0.01))
    for i in range(steps):
        ctx.check_cancelled()
        time.sleep(dt)
        ctx.progress("fail", step=i + 1, total=steps)
    raise RuntimeError(str(config.get("message", "intentional failure")))


def toy_train_job(config: dict, ctx: RunContext) -> dict:
    """Deterministic logistic regression on a seeded synthetic problem (numpy).

    Config: seed, n_samples (256), n_features (8), epochs (60), lr (0.5),
    noise (0.5).  Full-batch gradient descent in float64, so the same config
    gives bit-identical metrics in any worker process.
    """
    import numpy as np

    seed = int(config.get("seed", 0))
    n = int(config.get("n_samples", 256))
    d = int(config.get("n_features", 8))
    epochs = int(config.get("epochs", 60))
    lr = float(config.get("lr", 0.5))
    noise = float(config.get("noise", 0.5))
    rng = np.random.default_rng(seed)
    w_true = rng.normal(size=d)
    x = rng.normal(size=(n, d))
    y = ((x @ w_true + noise * rng.normal(size=n)) > 0).astype(np.float64)
    n_train = (3 * n) // 4
    xtr, ytr, xte, yte = x[:n_train], y[:n_train], x[n_train:], y[n_train:]
    w = np.zeros(d)
    b = 0.0
    loss = float("nan")
    for epoch in range(epochs):
        ctx.check_cancelled()
        z = xtr @ w + b
        p = 1.0 / (1.0 + np.exp(-z))
        eps = 1e-12
        loss = float(-np.mean(ytr * np.log(p + eps) + (1 - ytr) * np.log(1 - p + eps)))
        grad = p - ytr
        w = w - lr * (xtr.T @ grad) / n_train
        b = b - lr * float(np.mean(grad))
        ctx.progress("train", step=epoch + 1, total=epochs, loss=loss)
    acc = float(np.mean(((xte @ w + b) > 0).astype(np.float64) == yte))
    return {
        "seed": seed,
        "final_loss": loss,
        "test_accuracy": acc,
        "weight_norm": float(np.linalg.norm(w)),
        "bias": float(b),
    }
