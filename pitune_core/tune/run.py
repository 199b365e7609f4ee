"""One π-Tuning transfer run, as the CLI, the dashboard and the run registry launch it.

``prepare_transfer(config)`` validates everything (target, k, sources, method, backbone, weights)
before any training starts; ``run_transfer(config, run_dir)`` trains and writes the run directory:

- ``config.json`` — the resolved configuration (sources, k, weights, seed, shots, study)
- ``weights.json`` — the mixing weights over training steps
- ``expert/`` — the merged expert, an ordinary peft adapter + ``pitune_expert.json``
- ``metrics.json`` — written last; its presence means the run finished
- ``FAILED`` + ``error.txt`` — instead of metrics.json when the run failed; no half-written expert
  ever sits in ``expert/`` (experts are written atomically).

The sources (the experts a run may draw on and their predicted similarities) are an argument:
:func:`pitune_core.study.sources.load_sources` reads them from a study; the run itself never opens
a study.
"""

from __future__ import annotations

import json
import time
import traceback
from pathlib import Path
from typing import Callable

from pitune_core.tune.interpolation import InterpolationError, parse_weights

DEFAULTS = {"k": 3, "method": "lora", "shots": 16, "weights": "uniform", "sources": None, "seed": 0,
            "study": "precomputed", "weights_only": False, "embedding": "fisher"}


def prepare_transfer(config: dict, sources) -> dict:
    """Fill defaults and validate; raises a clear ValueError before any training."""
    from pitune_core.tune.baselines import resolve_sources
    from pitune_core.data.tasks import get_task

    cfg = {**DEFAULTS, **{k: v for k, v in config.items() if v is not None}}
    get_task(cfg["target"])
    if cfg["method"] not in ("lora", "prompt", "ia3"):
        raise InterpolationError(f"unknown expert method {cfg['method']!r}; choose lora, prompt or ia3")
    k = cfg.get("k")
    if k is not None and int(k) < 1:
        raise InterpolationError(f"k must be at least 1, got {k}")
    if cfg["shots"] is not None and int(cfg["shots"]) < 1:
        raise InterpolationError(f"shots must be at least 1, got {cfg['shots']}")
    names = cfg["sources"]
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    chosen = resolve_sources(cfg["target"], sources, int(k) if k is not None else None, names or None)
    cfg["k"] = len(chosen)
    cfg["sources"] = [n for n, _ in chosen]
    cfg["similarities"] = [s for _, s in chosen]
    w = parse_weights(cfg["weights"], cfg["k"])
    cfg["weights"] = w
    if cfg["shots"] is not None:
        get_task(cfg["target"]).load().few_shot(int(cfg["shots"]), seed=int(cfg["seed"]))
    from pitune_core.tune.interpolation import check_sources

    check_sources([sources.expert_dirs[n] for n in cfg["sources"]])
    return cfg


def run_transfer(config: dict, sources, run_dir: str | Path, on_step: Callable[[dict], None] | None = None,
                 backbone=None) -> dict:
    """Validate, train, write the run directory; returns the metrics."""
    from pitune_core.model.backbone import UnifiedBackbone
    from pitune_core.tune.baselines import interpolate_and_tune

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    try:
        cfg = prepare_transfer(config, sources)
        (run_dir / "config.json").write_text(json.dumps(cfg, indent=2))
        bb = backbone or UnifiedBackbone.load(Path(cfg["study"]) / "backbone")
        fixed = isinstance(cfg["weights"], list)
        interp, metrics, history = interpolate_and_tune(
            cfg["target"], list(zip(cfg["sources"], cfg["similarities"])), sources, bb,
            None if cfg["shots"] is None else int(cfg["shots"]), int(cfg["seed"]), weights=cfg["weights"],
            train_weights=not fixed, train_experts=not cfg["weights_only"], on_step=on_step)
        (run_dir / "weights.json").write_text(json.dumps({"sources": cfg["sources"], "history": history}, indent=1))
        if on_step:
            on_step({"stage": "save"})
        interp.save_merged(run_dir / "expert", {"task": cfg["target"], "modality": _modality(cfg["target"]),
                                                "seed": cfg["seed"], "shots": cfg["shots"], "metrics": metrics})
        result = {"target": cfg["target"], "k": cfg["k"], "sources": cfg["sources"],
                  "final_weights": history[-1]["weights"], "accuracy": metrics["test"]["accuracy"],
                  "test": metrics["test"], "val": metrics["val"], "steps": metrics["steps"],
                  "time_s": round(time.time() - t0, 1)}
        (run_dir / "metrics.json").write_text(json.dumps(result, indent=2))
        return result
    except BaseException as e:
        (run_dir / "error.txt").write_text("".join(traceback.format_exception(e)))
        (run_dir / "FAILED").write_text(f"{type(e).__name__}: {e}\n")
        raise


def _modality(task: str) -> str:
    from pitune_core.data.tasks import get_task

    return get_task(task).modality
