"""Test-only job kinds (noop, sleep, fail, toy-train, bad-result), registered when this module is imported.

They live here, not in :mod:`pitune_core.runs`, because the registry is generic and ships no test
job. A test that uses them imports this module; a scheduler started by that test passes the module
to its workers (``--jobs-module``), which import it and so learn the same kinds. Importing it also
puts this folder on ``PYTHONPATH`` so that worker processes (local, detached, Ray) can import it
under the same name.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from pitune_core.runs.jobs import register_job

_HERE = str(Path(__file__).resolve().parent)
_paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
if _HERE not in _paths:
    os.environ["PYTHONPATH"] = os.pathsep.join([_HERE, *_paths])


def noop_job(config: dict, ctx) -> dict:
    """Does nothing (used to measure executor overhead); reports its thread caps."""
    env = {k: os.environ.get(k) for k in ("PITUNE_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    return {"ok": True, "num_threads": ctx.num_threads, "env": env}


def sleep_job(config: dict, ctx) -> dict:
    """``steps`` steps of ``seconds_per_step``; progress each step, cooperative cancel.

    ``ignore_cancel: true`` makes it ignore cancellation (to test forced stops).
    """
    steps = int(config.get("steps", 10))
    dt = float(config.get("seconds_per_step", 0.1))
    ignore_cancel = bool(config.get("ignore_cancel", False))
    ctx.log(f"sleep: {steps} steps x {dt}s")
    try:
        for i in range(steps):
            if not ignore_cancel:
                ctx.check_cancelled()
            time.sleep(dt)
            ctx.progress("sleep", step=i + 1, total=steps)
    except BaseException as exc:
        if config.get("mark_interrupted") and not isinstance(exc, Exception):  # as run_transfer does
            (ctx.run_dir / "INTERRUPTED").write_text(f"{type(exc).__name__}: {exc}\n")
        raise
    return {"steps": steps, "slept": round(steps * dt, 6)}


def validate_sleep(config: dict) -> None:
    steps = config.get("steps", 10)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise ValueError(f"sleep: steps must be a whole number >= 0, got {steps!r}")


def fail_job(config: dict, ctx) -> dict:
    """Raises ``RuntimeError(message)`` after ``steps`` steps."""
    steps = int(config.get("steps", 0))
    dt = float(config.get("seconds_per_step", 0.01))
    for i in range(steps):
        ctx.check_cancelled()
        time.sleep(dt)
        ctx.progress("fail", step=i + 1, total=steps)
    raise RuntimeError(str(config.get("message", "intentional failure")))


def toy_train_job(config: dict, ctx) -> dict:
    """Deterministic logistic regression on a seeded synthetic problem (numpy).

    Config: seed, n_samples (256), n_features (8), epochs (60), lr (0.5), noise (0.5). Full-batch
    gradient descent in float64, so the same config gives bit-identical metrics in any worker.
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


def bad_result_job(config: dict, ctx) -> list:
    """Returns a list instead of a dict of metrics (the worker must record a failure)."""
    return [1, 2, 3]


KINDS = {"noop": noop_job, "sleep": sleep_job, "fail": fail_job, "toy-train": toy_train_job,
         "bad-result": bad_result_job}
for _kind, _fn in KINDS.items():
    register_job(_kind, _fn, validate=validate_sleep if _kind == "sleep" else None)
