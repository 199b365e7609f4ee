"""One π-Tuning transfer run, as the CLI, the dashboard and the run registry launch it.

``prepare_transfer(config)`` validates everything (target, k, sources, method, backbone, weights)
before any training starts; ``run_transfer(config, run_dir)`` trains and writes the run directory:

- ``config.json`` — the resolved configuration (sources, k, weights, seed, shots, study)
- ``weights.json`` — the mixing weights over training steps
- ``expert/`` — the merged expert, an ordinary peft adapter + ``pitune_expert.json``
- ``own/`` — the target's own expert, trained on the run's data only (the paper's recipe interpolates
  it with the sources; ``own_expert: false`` leaves it out, and fixed hand-set weights, which name
  one weight per source, do too)
- ``metrics.json`` — written last; its presence means the run finished (with ``robustness: true``, it
  also holds the tuned model's robustness rows, :mod:`pitune_core.tune.robustness`)
- ``FAILED`` + ``error.txt`` — instead of metrics.json when the run failed; no half-written expert
  ever sits in ``expert/`` (experts are written atomically).
- ``INTERRUPTED`` — one line, when the run was stopped (Ctrl-C, a cancel, SIGTERM); no traceback,
  no ``FAILED`` (the run registry then records the final word, e.g. ``CANCELLED``).

A run directory holds one attempt: :func:`run_transfer` refuses a directory that already holds a
run's outputs (the CLI moves them into ``attempt-<n>/`` first; the registry does on resume).

The sources (the experts a run may draw on and their predicted similarities) are an argument:
:func:`pitune_core.study.sources.load_sources` reads them from a study; the run itself never opens
a study.
"""

from __future__ import annotations

import contextlib
import json
import time
import traceback
from pathlib import Path
from typing import Callable

from pitune_core.spec.configs import TransferConfig
from pitune_core.spec.vocab import DEFAULT_K
from pitune_core.tune.interpolation import InterpolationError, check_sources, parse_weights
from pitune_core.data.tasks import get_task
from pitune_core.model.backbone import UnifiedBackbone
from pitune_core.paths import StudyPaths, cache_dir
from pitune_core.predict.embeddings import load_embeddings
from pitune_core.predict.predictors import available_examples, predict_row, study_context
from pitune_core.tune import baselines  # baselines.budget_for is looked up when called (tests replace it)
from pitune_core.tune.baselines import (DATA_STAGE, Recipe, interpolate_and_tune, resolve_sources, run_data,
                                        split_budget, target_side)
from pitune_core.paths import default_study
from pitune_core.tune import robustness  # robustness.score_robustness is looked up when called (tests replace it)
from pitune_core.predict.quality import predictor_of

#: what a run writes besides config.json; any of them present means the directory holds a run
RUN_OUTPUTS = ("weights.json", "expert", "own", "metrics.json", "error.txt", "FAILED", "INTERRUPTED", "CANCELLED")

#: written first into every run directory: how ``transfer --out`` recognises an earlier run that pitune
#: wrote (and may move aside) from files it did not write (which it never moves)
RUN_MARKER = ".pitune-run"
#: every name a run writes at the top of its directory
RUN_FILES = (RUN_MARKER, "config.json", *RUN_OUTPUTS)

#: a transfer config's defaults: :class:`pitune_core.spec.configs.TransferConfig`'s (k: the spec's default k)
DEFAULTS = {**{n: v for n, v in TransferConfig.defaults().items() if n != "target"}, "k": DEFAULT_K}


def prepare_transfer(config: dict, sources) -> dict:
    """Fill defaults and validate; raises a clear ValueError before any training."""
    try:  # the spec's settings fill the defaults and validate them, once
        tc = TransferConfig.from_dict(config, strict=False)
    except InterpolationError:
        raise
    except ValueError as e:
        raise InterpolationError(str(e)) from None
    cfg = {**DEFAULTS, **{k: v for k, v in config.items() if v is not None}, **tc.to_dict()}  # shots None: full data
    cfg["k"] = None if tc.k is None and tc.sources else tc.resolved_k  # named sources: k is their number
    if cfg["study"] is None:
        cfg["study"] = str(default_study())
    get_task(cfg["target"])
    k = cfg.get("k")
    names = cfg["sources"]
    chosen = resolve_sources(cfg["target"], sources, int(k) if k is not None else None, names or None)
    cfg["k"] = len(chosen)
    cfg["sources"] = [n for n, _ in chosen]
    cfg["similarities"] = [s for _, s in chosen]
    w = parse_weights(cfg["weights"], cfg["k"])
    cfg["weights"] = w
    if cfg["shots"] is not None:
        get_task(cfg["target"]).load().few_shot(int(cfg["shots"]), seed=int(cfg["seed"]))

    check_sources([sources.expert_dirs[n] for n in cfg["sources"]])
    return cfg


def run_transfer(config: dict, sources, run_dir: str | Path, on_step: Callable[[dict], None] | None = None,
                 backbone=None) -> dict:
    """Validate, train, write the run directory; returns the metrics."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"run directory {run_dir} is a file; give a directory")
    earlier = sorted(n for n in RUN_OUTPUTS if (run_dir / n).exists())
    if earlier:  # never write a new attempt beside the files of an earlier one
        raise ValueError(f"run directory {run_dir} already holds a run ({', '.join(earlier)}); "
                         f"give a new directory or move those files away")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_MARKER).write_text('{"format": "pitune-run/1"}\n')
    t0 = time.time()
    try:
        cfg = prepare_transfer(config, sources)
        (run_dir / "config.json").write_text(json.dumps(cfg, indent=2))
        bb = backbone or UnifiedBackbone.load(Path(cfg["study"]) / "backbone")
        fixed = isinstance(cfg["weights"], list)
        if fixed and cfg["own_expert"]:
            cfg["own_expert"] = False
            cfg["own_expert_note"] = "left out: fixed weights name one weight per source"
        tune_steps, own_dir = None, None
        rank = cfg["shots"] is not None and not config.get("sources")  # protocol: rank from the shots alone
        if rank or cfg["own_expert"]:
            cfg, tune_steps, own_dir = _target_side(cfg, sources, bb, run_dir, rank, on_step)
            (run_dir / "config.json").write_text(json.dumps(cfg, indent=2))
        tune_cb = on_step
        if on_step is not None and own_dir is not None:  # the data stage is over: not reported a second time

            tune_cb = lambda p: None if p.get("stage") == DATA_STAGE else on_step(p)  # noqa: E731
        interp, metrics, history = interpolate_and_tune(
            cfg["target"], list(zip(cfg["sources"], cfg["similarities"])), sources, bb,
            None if cfg["shots"] is None else int(cfg["shots"]), int(cfg["seed"]), weights=cfg["weights"],
            train_weights=not fixed, train_experts=not cfg["weights_only"], on_step=tune_cb, steps=tune_steps,
            own_dir=own_dir if cfg["own_expert"] else None)
        labels = cfg["sources"] + ([f"{cfg['target']} (own)"] if cfg["own_expert"] else [])
        (run_dir / "weights.json").write_text(json.dumps({"sources": labels, "history": history}, indent=1))
        if on_step:
            on_step({"stage": "save"})
        interp.save_merged(run_dir / "expert", {"task": cfg["target"], "modality": _modality(cfg["target"]),
                                                "seed": cfg["seed"], "shots": cfg["shots"], "metrics": metrics})
        result = {"target": cfg["target"], "k": cfg["k"], "sources": cfg["sources"], "own_expert": cfg["own_expert"],
                  "final_weights": history[-1]["weights"], "accuracy": metrics["test"]["accuracy"],
                  "test": metrics["test"], "val": metrics["val"], "steps": metrics["steps"],
                  "time_s": round(time.time() - t0, 1)}
        if cfg.get("robustness"):  # off by default: a run's metrics.json gains this key only when asked
            if on_step:
                on_step({"stage": robustness.ROBUSTNESS_STAGE})
            result["robustness"] = robustness.score_robustness(cfg["target"], bb, interp.bake(), seed=int(cfg["seed"]))
        (run_dir / "metrics.json").write_text(json.dumps(result, indent=2))
        return result
    except Exception as e:
        with contextlib.suppress(OSError):  # never hide the run's own error behind a write error
            (run_dir / "error.txt").write_text("".join(traceback.format_exception(e)))
            (run_dir / "FAILED").write_text(f"{type(e).__name__}: {e}\n")
        raise
    except BaseException as e:  # stopped, not failed: KeyboardInterrupt, a registry cancel, SIGTERM
        with contextlib.suppress(OSError):
            (run_dir / "INTERRUPTED").write_text(f"{type(e).__name__}: {e}".rstrip(": ") + "\n")
        raise


def _target_side(cfg: dict, sources, bb, run_dir: Path, rank: bool, on_step=None) -> tuple[dict, int, str]:
    """The target's side of a run, from the run's data alone (the protocol, see
    :func:`pitune_core.tune.baselines.target_side`): its own expert trained on that data (kept in
    ``run_dir/own``; its steps come out of the run's budget, as in the study) and, when ``rank``, the
    sources ranked by that expert's Fisher against the study's source embeddings. Without Fisher
    embeddings in the study the study's ranking stays, and the config says so (``selection``).
    Returns the updated config, the tuning steps left and the own expert's directory."""
    import dataclasses

    shots = None if cfg["shots"] is None else int(cfg["shots"])
    seed = int(cfg["seed"])
    emb = StudyPaths(cfg["study"]).embeddings_file(cfg["method"], "fisher")
    use_emb = rank and cfg.get("embedding", "fisher") == "fisher" and emb.exists()
    src = dataclasses.replace(sources, embeddings=load_embeddings(emb) if use_emb else None)
    if on_step:
        on_step({"stage": DATA_STAGE})
    _, _, train_t = run_data(cfg["target"], bb, shots, seed)
    own_steps, tune_steps = split_budget(baselines.budget_for(shots, seed).steps_for(len(train_t)), Recipe())
    side = target_side(cfg["target"], src, bb, cfg["method"], shots, seed, own_steps, run_dir, on_step=on_step)
    cfg["steps_select"] = side.own_steps
    if rank:
        predictor = predictor_of(cfg.get("embedding", "fisher"))
        if use_emb or sources.ranker is not None:  # a library ranks by its adapters' weights
            top = side.ranking[: cfg["k"]]
            cfg.update(sources=[n for n, _ in top], similarities=[s for _, s in top], selection="shots")
        elif predictor:
            if on_step:
                on_step({"stage": f"rank the sources by {predictor} on the run's data"})
            top = _predictor_ranking(predictor, cfg, sources, bb, on_step)[: cfg["k"]]
            cfg.update(sources=[n for n, _ in top], similarities=[s for _, s in top], selection=f"shots ({predictor})")
        else:
            cfg["selection"] = "study (ranked with the target's full-data expert)"
    return cfg, tune_steps, side.own_dir


def _predictor_ranking(predictor: str, cfg: dict, sources, bb, on_step=None) -> list[tuple[str, float]]:
    """The study's sources ranked by ``predictor`` computed from the run's own training examples
    (the same ``shots`` sample the run trains on, :func:`available_examples`): a few-shot run never
    uses the predictor's full-data row of the study graph. Best first, ties by name. The sources'
    side comes from the study (:func:`~pitune_core.predict.predictors.study_context`); a row it does
    not ship is computed once, as a named stage with a count."""
    experts = {n: Path(d) for n, d in sorted(sources.expert_dirs.items()) if n != cfg["target"]}
    ctx = study_context(cfg["study"], bb, experts, cfg["method"], cache_dir=cache_dir() / "predictors",
                        on_progress=on_step)
    shots = None if cfg["shots"] is None else int(cfg["shots"])
    row = predict_row(predictor, available_examples(cfg["target"], bb, shots, int(cfg["seed"])), ctx)
    return sorted(zip(ctx.sources_for(cfg["target"]), (float(x) for x in row)), key=lambda x: (-x[1], x[0]))


def _modality(task: str) -> str:
    return get_task(task).modality
