"""One π-Tuning transfer run, as the CLI, the dashboard and the run registry launch it.

``prepare_transfer(config)`` validates everything (target, k, sources, method, backbone, weights)
before any training starts; ``run_transfer(config, run_dir)`` trains and writes the run directory:

- ``config.json`` — the resolved configuration (sources, k, weights, seed, shots, study)
- ``weights.json`` — the mixing weights over training steps
- ``expert/`` — the merged expert, an ordinary peft adapter + ``pitune_expert.json``
- ``metrics.json`` — written last; its presence means the run finished
- ``FAILED`` + ``error.txt`` — instead of metrics.json when the run failed; no half-written expert
  ever sits in ``expert/`` (experts are written atomically).

Also the job functions the run registry executes (kinds ``transfer``, ``train-expert``).
"""

from __future__ import annotations

import json
import time
import traceback
from pathlib import Path
from typing import Callable

from .interpolation import InterpolationError, parse_weights

DEFAULTS = {"k": 3, "method": "lora", "shots": 16, "weights": "uniform", "sources": None, "seed": 0,
            "study": "precomputed", "weights_only": False, "embedding": "fisher"}


def load_sources(study: str | Path, method: str, embedding: str = "fisher"):
    """The study's experts of one method and the predicted similarities between them."""
    from .pituning import Sources
    from .similarity import read_similarity_csv

    study = Path(study)
    root = study / "experts" / method
    if not root.is_dir():
        raise InterpolationError(f"study {study} has no {method} experts (expected {root}); "
                                 f"run `pitune precompute` or train experts first")
    dirs = {p.name: str(p) for p in sorted(root.iterdir()) if (p / "pitune_expert.json").exists()}
    sim_path = study / "predict" / method / embedding / "similarity.csv"
    if not sim_path.exists():
        raise InterpolationError(f"no {embedding} similarities for {method} experts in {study} ({sim_path} missing)")
    names, S = read_similarity_csv(sim_path)
    return Sources(dirs, names, S)


def prepare_transfer(config: dict) -> dict:
    """Fill defaults and validate; raises a clear ValueError before any training."""
    from .pituning import resolve_sources
    from .tasks import get_task

    cfg = {**DEFAULTS, **{k: v for k, v in config.items() if v is not None}}
    get_task(cfg["target"])
    if cfg["method"] not in ("lora", "prompt", "ia3"):
        raise InterpolationError(f"unknown expert method {cfg['method']!r}; choose lora, prompt or ia3")
    k = cfg.get("k")
    if k is not None and int(k) < 1:
        raise InterpolationError(f"k must be at least 1, got {k}")
    if cfg["shots"] is not None and int(cfg["shots"]) < 1:
        raise InterpolationError(f"shots must be at least 1, got {cfg['shots']}")
    sources = load_sources(cfg["study"], cfg["method"], cfg["embedding"])
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
    from .interpolation import check_sources

    check_sources([sources.expert_dirs[n] for n in cfg["sources"]])
    return cfg


def run_transfer(config: dict, run_dir: str | Path, on_step: Callable[[dict], None] | None = None,
                 backbone=None) -> dict:
    """Validate, train, write the run directory; returns the metrics."""
    from .backbone import UnifiedBackbone
    from .pituning import interpolate_and_tune

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    try:
        cfg = prepare_transfer(config)
        (run_dir / "config.json").write_text(json.dumps(cfg, indent=2))
        bb = backbone or UnifiedBackbone.load(Path(cfg["study"]) / "backbone")
        sources = load_sources(cfg["study"], cfg["method"], cfg["embedding"])
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
    from .tasks import get_task

    return get_task(task).modality


# ----------------------------------------------------------------------------- registry jobs

def transfer_job(config: dict, ctx) -> dict:
    """Run-registry job: one interpolate-and-tune run, with live progress."""
    from .device import configure_threads

    configure_threads()

    def on_step(p):
        ctx.progress(p.get("stage", "train"), step=p.get("step"), total=p.get("total"), loss=p.get("loss"))
        ctx.check_cancelled()

    ctx.progress("prepare")
    return run_transfer(config, ctx.run_dir, on_step=on_step)


def train_expert_job(config: dict, ctx) -> dict:
    """Run-registry job: train one expert into the run directory."""
    from .backbone import UnifiedBackbone
    from .device import configure_threads
    from .experts import TrainConfig, train_expert

    configure_threads()
    bb = UnifiedBackbone.load(config.get("projector"))

    def on_step(p):
        ctx.progress(p.get("stage", "train"), step=p.get("step"), total=p.get("total"), loss=p.get("loss"))
        ctx.check_cancelled()

    cfg = TrainConfig(seed=int(config.get("seed", 0)), max_steps=int(config.get("max_steps", TrainConfig.max_steps)))
    res = train_expert(config["task"], config.get("method", "lora"), bb, shots=config.get("shots"),
                       seed=cfg.seed, out=Path(ctx.run_dir) / "expert", train_config=cfg, on_step=on_step)
    return {"task": config["task"], **res.meta["metrics"]["test"]}


def transfer_pair_job(config: dict, ctx) -> dict:
    """Run-registry job: one cell of the pairwise transfer study (scratch when source is None)."""
    from .backbone import UnifiedBackbone
    from .device import configure_threads
    from .transfer_study import TransferBudget, few_shot_score

    configure_threads()
    bb = UnifiedBackbone.load(config.get("projector"))
    budget = TransferBudget(shots=int(config["shots"]), steps=int(config["steps"]),
                            eval_limit=config.get("eval_limit", TransferBudget.eval_limit))
    score = few_shot_score(config["target"], config.get("method", "lora"), bb, budget, int(config["seed"]),
                           config.get("source_dir"))
    return {"target": config["target"], "source": config.get("source") or "scratch", "seed": int(config["seed"]),
            "score": score}
