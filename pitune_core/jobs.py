"""The real job kinds (π-Tuning runs, experts, transfer pairs), registered with :mod:`pitune_core.runs`.

:mod:`pitune_core.runs` is generic: it schedules and records jobs but knows none of them. This
module is the one place that tells it which ML jobs exist; importing it registers them. Workers
execute only kinds registered in code (never an import path read from the database).
"""

from __future__ import annotations

from pathlib import Path

from pitune_core.paths import default_study
from pitune_core.runs.jobs import register_job
from pitune_core.spec.configs import PlaceConfig, TrainExpertConfig, TransferConfig
from pitune_core.spec.parse import (check_expert_type, check_int, check_not_own_source, check_task_name, parse_shots,
                                    parse_sources)
from pitune_core.spec.vocab import DEFAULT_K, DEFAULT_SHOTS
from pitune_core.model.library import open_library
from pitune_core.study.verify import require_verified
from pitune_core.tune.weights import parse_weights
from pitune_core.data.tasks import get_task


def transfer_job(config: dict, ctx) -> dict:
    """Run-registry job: one interpolate-and-tune run, with live progress."""
    from pitune_core.model.device import configure_threads  # lazy: loads torch
    from pitune_core.study.sources import load_sources  # lazy: loads torch
    from pitune_core.tune.run import run_transfer  # lazy: loads torch

    configure_threads()

    def on_step(p):
        ctx.progress(p.get("stage", "train"), step=p.get("step"), total=p.get("total"), loss=p.get("loss"))
        ctx.check_cancelled()

    ctx.progress("prepare")
    cfg = TransferConfig.from_dict(config, strict=False)  # validated at submit and again by the worker
    sources = load_sources(cfg.study or default_study(), cfg.method, cfg.embedding)
    return run_transfer(config, sources, ctx.run_dir, on_step=on_step)


def library_transfer_job(config: dict, ctx) -> dict:
    """Run-registry job: one π-Tuning run over an imported library (``config["library"]``), as
    ``pitune transfer TARGET --library LIB`` runs it (:func:`pitune_core.tune.library.run_library_transfer`)."""
    from pitune_core.model.device import configure_threads  # lazy: loads torch
    from pitune_core.tune.library import resolve_embedding, run_library_transfer  # lazy: loads numpy

    configure_threads()

    def on_step(p):
        ctx.progress(p.get("stage", "train"), step=p.get("step"), total=p.get("total"), loss=p.get("loss"))
        ctx.check_cancelled()

    ctx.progress("prepare")
    run = {k: v for k, v in config.items() if k not in ("library", "embedding")}
    emb = resolve_embedding(open_library(config["library"]), config.get("embedding"))
    return run_library_transfer(run, config["library"], ctx.run_dir, emb, on_step=on_step)


def train_expert_job(config: dict, ctx) -> dict:
    """Run-registry job: train one expert into the run directory."""
    from pitune_core.model.backbone import UnifiedBackbone  # lazy: loads torch
    from pitune_core.model.device import configure_threads  # lazy: loads torch
    from pitune_core.model.experts import TrainConfig, train_expert  # lazy: loads torch

    configure_threads()
    bb = UnifiedBackbone.load(config.get("projector"))

    def on_step(p):
        ctx.progress(p.get("stage", "train"), step=p.get("step"), total=p.get("total"), loss=p.get("loss"))
        ctx.check_cancelled()

    tc = TrainExpertConfig.from_dict(config, strict=False)
    cfg = TrainConfig(seed=tc.seed, max_steps=tc.max_steps or TrainConfig.max_steps)
    res = train_expert(tc.task, tc.method, bb, shots=tc.shots, seed=cfg.seed, out=Path(ctx.run_dir) / "expert",
                       train_config=cfg, on_step=on_step)
    return {"task": config["task"], **res.meta["metrics"]["test"]}


def transfer_pair_job(config: dict, ctx) -> dict:
    """Run-registry job: one cell of the pairwise transfer study (scratch when source is None)."""
    from pitune_core.model.backbone import UnifiedBackbone  # lazy: loads torch
    from pitune_core.model.device import configure_threads, describe_device  # lazy: loads torch
    from pitune_core.study.transfer import TransferBudget, few_shot_score  # lazy: loads torch

    configure_threads()
    bb = UnifiedBackbone.load(config.get("projector"))
    budget = TransferBudget(shots=parse_shots(config["shots"]), steps=int(config["steps"]),
                            eval_limit=config.get("eval_limit", TransferBudget.eval_limit))
    score = few_shot_score(config["target"], config.get("method", "lora"), bb, budget, int(config["seed"]),
                           config.get("source_dir"))
    return {"target": config["target"], "source": config.get("source") or "scratch", "seed": int(config["seed"]),
            "score": score, "device": describe_device(bb.device)}


def place_task_job(config: dict, ctx) -> dict:
    """Run-registry job: put a user task on a study's graph (its own expert, Fisher, similarities,
    top-k, map position), written beside the study (:mod:`pitune_core.study.place`)."""
    import os

    from pitune_core.model.device import configure_threads  # lazy: loads torch
    from pitune_core.study.place import place_task  # lazy: loads safetensors

    if config.get("store"):  # the store the dashboard wrote the task to
        os.environ["PITUNE_TASKS"] = str(config["store"])
    configure_threads()

    def on_step(p):
        ctx.progress(p.get("stage", "train"), step=p.get("step"), total=p.get("total"), loss=p.get("loss"))
        ctx.check_cancelled()

    cfg = PlaceConfig.from_dict({n: config.get(n) for n in PlaceConfig.names()})
    rec = place_task(config["task"], config["study"], cfg, on_progress=on_step)
    return {"task": rec["task"], "top_k": rec["top_k"], "embedding": rec["embedding"], "position": rec["position"],
            "also_placed_on": rec.get("also_placed_on") or {},
            "expert_accuracy": rec["expert"]["test"]["accuracy"], "time_s": rec["timings_s"]["total"]}


# ----------------------------------------------------------------------------- validators
# Called by RunRegistry.submit in the submitting process (the CLI, the dashboard): cheap checks only,
# no torch, so that a run that would be refused is never queued; and again by the worker
# (runs.worker.execute_run, local or Ray) before the job starts, so a row never skips them.


def _int(config: dict, key: str, default=None, minimum: int | None = None, required: bool = False):
    value = config.get(key, default)
    if value is None and not required:
        return None
    return check_int(value, key, minimum)


def _known_task(name, what: str) -> str:
    get_task(check_task_name(name, what))
    return name


def _verified_study(study: str, command: str) -> None:
    """The study's manifest check, as ``pitune transfer`` / ``task place`` run it (no torch, bounded
    reads): a run on a study that fails it is refused at submit and again in the worker."""
    require_verified(study, command)


def _expert_type(config: dict) -> None:
    check_expert_type(config.get("method", TransferConfig.default_of("method")))


def validate_transfer(config: dict) -> None:
    """A ``transfer`` config: a known target, then the spec's :class:`TransferConfig` checks (expert type,
    embedding, k, sources, weights, shots, seed, flags), then a verified study directory."""
    _known_task(config.get("target"), "target")
    cfg = TransferConfig.from_dict(config, strict=False)
    if cfg.study is not None and not Path(cfg.study).is_dir():
        raise ValueError(f"study {cfg.study!r} is not a directory")
    _verified_study(cfg.study or str(default_study()), "transfer")


def validate_library_transfer(config: dict) -> None:
    """A ``library-transfer`` config: an imported library whose base is unchanged, a known target, k,
    sources, weights, shots, seed (no torch: the library's checks read JSON and hash the base)."""
    lib = open_library(config.get("library"))
    target = _known_task(config.get("target"), "target")
    k = _int(config, "k", minimum=1)
    names = parse_sources(config.get("sources"), k)
    unknown = [n for n in names or [] if n not in lib.adapters]
    if unknown:
        raise ValueError(f"library {lib.name} has no adapter {unknown[0]!r}")
    check_not_own_source(target, names)
    parse_weights(config.get("weights", "uniform"), len(names) if names else (k or DEFAULT_K))
    parse_shots(config.get("shots", DEFAULT_SHOTS))
    _int(config, "seed", 0)
    if config.get("embedding") not in (None, "fisher", "weights", "arrow"):
        raise ValueError(f"unknown library embedding {str(config.get('embedding'))[:40]!r}")
    for flag in ("weights_only", "own_expert"):
        if not isinstance(config.get(flag, False), bool):
            raise ValueError(f"{flag} must be true or false, got {config.get(flag)!r}")


def validate_train_expert(config: dict) -> None:
    """A ``train-expert`` config: a known task, then the spec's :class:`TrainExpertConfig` checks."""
    _known_task(config.get("task"), "task")
    TrainExpertConfig.from_dict(config, strict=False)


def validate_transfer_pair(config: dict) -> None:
    """A ``transfer-pair`` config: known target (and source, unless scratch), shots, steps, seed."""
    _known_task(config.get("target"), "target")
    if config.get("source") is not None:
        _known_task(config["source"], "source")
        if not isinstance(config.get("source_dir"), str):
            raise ValueError("a transfer pair with a source needs its expert directory (source_dir)")
    _expert_type(config)
    if "shots" not in config:
        raise ValueError("a transfer pair needs its shots (a whole number >= 1, or 'full')")
    parse_shots(config["shots"])
    _int(config, "steps", minimum=1, required=True)
    _int(config, "seed", required=True)
    _int(config, "eval_limit", minimum=1)


def validate_place_task(config: dict) -> None:
    """A ``place-task`` config: an existing user task, a study, expert type, shots, seed, k."""
    from pitune_core.data.user_tasks import check_name  # lazy: loads safetensors

    if not isinstance(config.get("study"), str) or not config["study"]:
        raise ValueError("a place-task run needs the study directory (study)")
    _verified_study(config["study"], "task place")
    check_name(config.get("task"))
    PlaceConfig.from_dict({n: config.get(n) for n in PlaceConfig.names()})


#: kind -> job function; the worker runs nothing else
JOBS = {"transfer": transfer_job, "train-expert": train_expert_job, "transfer-pair": transfer_pair_job,
        "place-task": place_task_job, "library-transfer": library_transfer_job}
#: kind -> config check run before a run is queued
VALIDATORS = {"transfer": validate_transfer, "train-expert": validate_train_expert,
              "transfer-pair": validate_transfer_pair, "place-task": validate_place_task,
              "library-transfer": validate_library_transfer}

for _kind, _fn in JOBS.items():
    register_job(_kind, _fn, validate=VALIDATORS.get(_kind))
