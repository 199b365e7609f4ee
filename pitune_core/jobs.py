"""The real job kinds (π-Tuning runs, experts, transfer pairs), registered with :mod:`pitune_core.runs`.

:mod:`pitune_core.runs` is generic: it schedules and records jobs but knows none of them. This
module is the one place that tells it which ML jobs exist; importing it registers them. Workers
execute only kinds registered in code (never an import path read from the database).
"""

from __future__ import annotations

from pathlib import Path

from pitune_core.runs.jobs import register_job


def transfer_job(config: dict, ctx) -> dict:
    """Run-registry job: one interpolate-and-tune run, with live progress."""
    from pitune_core.model.device import configure_threads
    from pitune_core.study.sources import load_sources
    from pitune_core.tune.run import DEFAULTS, run_transfer

    configure_threads()

    def on_step(p):
        ctx.progress(p.get("stage", "train"), step=p.get("step"), total=p.get("total"), loss=p.get("loss"))
        ctx.check_cancelled()

    ctx.progress("prepare")
    cfg = {**DEFAULTS, **{k: v for k, v in config.items() if v is not None}}
    sources = load_sources(cfg["study"], cfg["method"], cfg["embedding"])
    return run_transfer(config, sources, ctx.run_dir, on_step=on_step)


def train_expert_job(config: dict, ctx) -> dict:
    """Run-registry job: train one expert into the run directory."""
    from pitune_core.model.backbone import UnifiedBackbone
    from pitune_core.model.device import configure_threads
    from pitune_core.model.experts import TrainConfig, train_expert

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
    from pitune_core.model.backbone import UnifiedBackbone
    from pitune_core.model.device import configure_threads
    from pitune_core.study.transfer import TransferBudget, few_shot_score

    configure_threads()
    bb = UnifiedBackbone.load(config.get("projector"))
    budget = TransferBudget(shots=int(config["shots"]), steps=int(config["steps"]),
                            eval_limit=config.get("eval_limit", TransferBudget.eval_limit))
    score = few_shot_score(config["target"], config.get("method", "lora"), bb, budget, int(config["seed"]),
                           config.get("source_dir"))
    return {"target": config["target"], "source": config.get("source") or "scratch", "seed": int(config["seed"]),
            "score": score}


#: kind -> job function; the worker runs nothing else
JOBS = {"transfer": transfer_job, "train-expert": train_expert_job, "transfer-pair": transfer_pair_job}

for _kind, _fn in JOBS.items():
    register_job(_kind, f"{__name__}:{_fn.__name__}")
