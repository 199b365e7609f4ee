"""π-Tuning runs and their honest baselines, under one budget.

``run_method(name, ...)`` trains and scores one approach on a target task; every approach sees the
same target data (``shots`` per class, or all of it), the same number of steps and the same seed:

- ``pi-tuning``: top-k predicted experts, learnable softmax weights, weights + experts tuned
- ``pi-tuning-weights-only``: the same with the experts frozen
- ``uniform-avg``: uniform average of the same k experts, no tuning
- ``uniform-avg-tuned``: uniform weights frozen, experts tuned
- ``random-k``: k random source experts, π-tuned
- ``best-single``: the single most similar expert as initialisation, tuned
- ``all-experts``: every other task's expert interpolated (k = all), π-tuned
- ``target-only``: a fresh expert trained on the target only
- ``full-finetune``: the whole trunk tuned on the target (no adapter)
- ``peft-linear`` / ``peft-ties`` / ``peft-dare``: peft's ``add_weighted_adapter`` merge of the top-k
  LoRA experts, then tuned (LoRA only)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from pitune_core.model.backbone import UnifiedBackbone
from pitune_core.model.device import seed_everything
from pitune_core.model.experts import TrainConfig, evaluate, get_method, prepare_task, train_expert, train_loop
from pitune_core.tune.interpolation import InterpolatedExperts, InterpolationError, parse_weights
from pitune_core.data.tasks import get_task

BASELINES = ("pi-tuning", "pi-tuning-weights-only", "uniform-avg", "uniform-avg-tuned", "random-k", "best-single",
             "all-experts", "target-only", "full-finetune", "peft-linear", "peft-ties", "peft-dare")
#: columns of a results.csv row (written by ``pitune compare`` and the study's compare stage)
RESULT_FIELDS = ("target", "approach", "shots", "seed", "accuracy", "score", "metric", "sources")


def result_row(r: dict) -> dict:
    """The one results.csv row of a :func:`run_method` result."""
    return {"target": r["target"], "approach": r["approach"], "shots": "full" if r["shots"] is None else r["shots"],
            "seed": r["seed"], "accuracy": round(r["accuracy"], 4), "score": round(r["score"], 4),
            "metric": r["metric"], "sources": "|".join(r.get("sources", []))}


WEIGHT_LR = 5e-2  # mixing logits learn faster than adapter weights


@dataclass
class Sources:
    """Where the source experts of one method live, and the predicted similarities between tasks."""

    expert_dirs: dict[str, str]
    names: list[str]
    sim: np.ndarray  # (n, n) predicted similarity (Fisher by default)

    def ranked(self, target: str) -> list[tuple[str, float]]:
        """Other tasks with an expert, most similar first (ties by name); target excluded."""
        if target not in self.names:
            raise InterpolationError(f"target {target!r} has no predicted similarities in this study")
        i = self.names.index(target)
        cands = [(n, float(self.sim[i, j])) for j, n in enumerate(self.names) if n != target and n in self.expert_dirs]
        return sorted(cands, key=lambda x: (-x[1], x[0]))

    def top_k(self, target: str, k: int) -> list[tuple[str, float]]:
        ranked = self.ranked(target)
        if k < 1 or k > len(ranked):
            raise InterpolationError(f"k={k} is out of range: {target} has {len(ranked)} candidate source experts "
                                     f"(k must be between 1 and {len(ranked)})")
        return ranked[:k]

    def similarity(self, target: str, source: str) -> float:
        return float(self.sim[self.names.index(target), self.names.index(source)])


def budget_for(shots: int | None, seed: int) -> TrainConfig:
    """One training budget per regime, shared by every approach."""
    if shots is None:
        return TrainConfig(seed=seed, max_steps=100)  # all training data, 100 steps
    return TrainConfig(seed=seed, epochs=5.0, min_steps=30, max_steps=100)


def resolve_sources(target: str, sources: Sources, k: int | None, names: list[str] | None) -> list[tuple[str, float]]:
    if names:
        unknown = [n for n in names if n not in sources.expert_dirs]
        if unknown:
            raise InterpolationError(f"no expert for source(s) {', '.join(unknown)} in this study; "
                                     f"available: {', '.join(sorted(sources.expert_dirs))}")
        if target in names:
            raise InterpolationError(f"the target {target!r} cannot be its own source")
        if k is not None and k != len(names):
            raise InterpolationError(f"k={k} but {len(names)} sources were named")
        return [(n, sources.similarity(target, n)) for n in names]
    return sources.top_k(target, k or 3)


def interpolate_and_tune(target: str, source_list: list[tuple[str, float]], sources: Sources,
                         backbone: UnifiedBackbone, shots: int | None, seed: int, weights="uniform",
                         train_weights: bool = True, train_experts: bool = True, tune: bool = True,
                         on_step: Callable[[dict], None] | None = None, record_every: int = 5):
    """The π-Tuning core: returns (InterpolatedExperts, metrics, weights history)."""
    spec = get_task(target)
    data, tensors = prepare_task(spec, backbone)
    train_t = tensors["train"] if shots is None else tensors["train"].subset(data.few_shot(shots, seed=seed))
    seed_everything(seed)
    interp = InterpolatedExperts(backbone, [sources.expert_dirs[n] for n, _ in source_list],
                                 weights=parse_weights(weights, len(source_list)),
                                 similarities=[s for _, s in source_list],
                                 train_weights=train_weights, train_experts=train_experts)
    history = [{"step": 0, "weights": interp.weights().tolist()}]
    losses: list[float] = []
    if tune and interp.trainable_parameters():
        cfg = budget_for(shots, seed)
        m = get_method(interp.method)

        def step_cb(p):
            if p.get("stage") == "train" and (p["step"] % record_every == 0 or p["step"] == p["total"]):
                history.append({"step": p["step"], "weights": interp.weights().tolist(), "loss": p["loss"]})
            if on_step:
                on_step(p)

        trunk = interp.trunk()
        groups = [{"params": [p for p in interp.sources if p.requires_grad], "lr": cfg.lr or m.lr}]
        if interp.logits.requires_grad:
            groups.append({"params": [interp.logits], "lr": WEIGHT_LR})
        losses = train_loop(backbone, trunk, train_t, list(spec.verbalizers), groups, groups[0]["lr"], cfg, step_cb)
    model = interp.bake()
    metrics = {"val": evaluate(backbone, model, tensors["val"], spec),
               "test": evaluate(backbone, model, tensors["test"], spec), "steps": len(losses),
               "final_loss": losses[-1] if losses else None, "num_train": len(train_t)}
    return interp, metrics, history


def _full_finetune(target: str, backbone: UnifiedBackbone, shots: int | None, seed: int) -> dict:
    spec = get_task(target)
    data, tensors = prepare_task(spec, backbone)
    train_t = tensors["train"] if shots is None else tensors["train"].subset(data.few_shot(shots, seed=seed))
    seed_everything(seed)
    trunk = backbone.fresh_trunk()
    trunk.requires_grad_(True)
    trunk.eval()
    train_loop(backbone, trunk, train_t, list(spec.verbalizers), list(trunk.parameters()), 3e-5, budget_for(shots, seed))
    return {"test": evaluate(backbone, trunk, tensors["test"], spec)}


def _peft_merge(target: str, source_list, sources: Sources, backbone: UnifiedBackbone, shots, seed, kind: str) -> dict:
    from peft import PeftModel

    spec = get_task(target)
    data, tensors = prepare_task(spec, backbone)
    train_t = tensors["train"] if shots is None else tensors["train"].subset(data.few_shot(shots, seed=seed))
    names = [n for n, _ in source_list]
    model = PeftModel.from_pretrained(backbone.fresh_trunk(), sources.expert_dirs[names[0]], adapter_name="s0")
    for i, n in enumerate(names[1:], 1):
        model.load_adapter(sources.expert_dirs[n], adapter_name=f"s{i}")
    adapters = [f"s{i}" for i in range(len(names))]
    w = [1.0 / len(names)] * len(names)
    kw = {"linear": dict(combination_type="linear"), "ties": dict(combination_type="ties", density=0.5),
          "dare": dict(combination_type="dare_linear", density=0.5)}[kind]
    seed_everything(seed)
    model.add_weighted_adapter(adapters, w, adapter_name="merged", **kw)
    model.set_adapter("merged")
    for n, p in model.named_parameters():
        p.requires_grad_(".merged." in n)
    model.to(backbone.device).eval()
    params = [p for p in model.parameters() if p.requires_grad]
    train_loop(backbone, model, train_t, list(spec.verbalizers), params, get_method("lora").lr, budget_for(shots, seed))
    return {"test": evaluate(backbone, model, tensors["test"], spec)}


def run_method(name: str, target: str, sources: Sources, backbone: UnifiedBackbone, method: str = "lora",
               k: int = 3, shots: int | None = 16, seed: int = 0) -> dict:
    """Score one approach; returns ``{"accuracy", "metric", "score", "sources", "weights"}``."""
    spec = get_task(target)
    t0 = time.time()
    top = sources.top_k(target, k)
    info: dict = {"sources": [n for n, _ in top]}
    if name in ("pi-tuning", "pi-tuning-weights-only", "uniform-avg", "uniform-avg-tuned", "random-k", "all-experts"):
        src = top
        if name == "random-k":
            rng = np.random.default_rng(seed + 1000)
            pool = sources.ranked(target)
            src = [pool[i] for i in sorted(rng.choice(len(pool), size=k, replace=False))]
        elif name == "all-experts":
            src = sources.ranked(target)
        interp, metrics, hist = interpolate_and_tune(
            target, src, sources, backbone, shots, seed, weights="uniform",
            train_weights=name in ("pi-tuning", "pi-tuning-weights-only", "random-k", "all-experts"),
            train_experts=name not in ("pi-tuning-weights-only",), tune=name != "uniform-avg")
        info = {"sources": [n for n, _ in src], "weights": hist[-1]["weights"]}
    elif name == "best-single":
        cfg = budget_for(shots, seed)
        res = train_expert(spec, method, backbone, shots=shots, seed=seed, train_config=cfg,
                           init_from=sources.expert_dirs[top[0][0]], evaluate_zero_shot=False)
        metrics = res.meta["metrics"]
        info = {"sources": [top[0][0]]}
    elif name == "target-only":
        res = train_expert(spec, method, backbone, shots=shots, seed=seed, train_config=budget_for(shots, seed),
                           evaluate_zero_shot=False)
        metrics = res.meta["metrics"]
        info = {"sources": []}
    elif name == "full-finetune":
        metrics = _full_finetune(target, backbone, shots, seed)
        info = {"sources": []}
    elif name in ("peft-linear", "peft-ties", "peft-dare"):
        if method != "lora":
            raise InterpolationError(f"{name} applies to LoRA experts only")
        metrics = _peft_merge(target, top, sources, backbone, shots, seed, name.split("-")[1])
    else:
        raise InterpolationError(f"unknown approach {name!r}; choose from {', '.join(BASELINES)}")
    return {"target": target, "approach": name, "method": method, "shots": shots, "seed": seed, "k": k,
            "accuracy": metrics["test"]["accuracy"], "metric": spec.metric, "score": metrics["test"][spec.metric],
            "time_s": round(time.time() - t0, 2), **info}
