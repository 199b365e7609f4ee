"""π-Tuning runs and the baselines a user would pick instead, under one protocol and one budget.

``run_method(name, ...)`` trains and scores one approach on a target task. Every approach sees the
same target data (``shots`` per class, or all of it), the same total number of gradient steps and
the same seed, and nothing else about the target:

**Equal budgets by construction** (``Recipe.budget = "equal"``, the default since issue 28): every
approach that tunes gets the same number of gradient steps on the target's data *after* source selection
(``steps["tune"]``); a selecting approach's own expert is its selection cost, counted apart
(``steps["select"]``, the same for every selecting approach) and reported beside it, like LoraHub's
``search_evals``. Plans written before issue 28 name no rule and keep the previous one (``"split"``:
the own expert's steps came out of the budget, so a selecting approach tuned for what was left).

**Target-side information = only the data the run trains on.** Approaches that choose sources
first train the target's *own* expert on the run's data (a share of the budget, ``Recipe.
select_fraction``), take its diagonal Fisher on that same data, and rank the study's source experts
by the Fisher similarity of that embedding to each source's (source↔source information from the
full-data study is fine; the target's own full-data expert and embedding are never read). The
ranking, ``auto`` weights and the sources therefore depend on the shots alone. Without source
embeddings (:attr:`Sources.embeddings` is None) a run falls back to the study's similarity matrix
and says so (``selection="study"``): that path sees the target's full data and is not protocol.

Approaches (``APPROACHES``):

- ``pi-tuning``: the paper's recipe: the own expert + the top-k predicted experts, softmax weights
  per layer and adapter position (uniform start), weights and experts tuned jointly
- ablations: ``pi-tuning-no-own`` (own expert left out of the interpolation), ``pi-tuning-global``
  (one weight vector), ``pi-tuning-weights-only`` (experts frozen)
- ``uniform-avg`` / ``uniform-avg-tuned``: uniform average of the same experts, untuned / experts tuned
- ``random-k``: π-Tuning over k random sources; ``all-experts``: over every source
- ``best-single``: the most similar source as initialisation, tuned
- ``target-only``: a fresh expert on the target; ``full-finetune``: the whole trunk tuned
- ``peft-linear`` / ``peft-ties`` / ``peft-dare``: peft's ``add_weighted_adapter`` merge of the
  top-k LoRA experts, then tuned (LoRA only)
- ``lorahub`` / ``lorahub-tuned``: LoraHub (Huang et al. 2023): weights for every source LoRA
  found gradient-free by nevergrad's NGOpt in [-1.5, 1.5] on the run's loss + 0.05·L1, 40
  evaluations, A and B merged by those weights; then used as is, or tuned (LoRA only)
- ``arrow``: peft's Arrow routing (Ostapenko et al. 2024) over the source LoRA library, top-k per
  token from each LoRA's top singular vector; training-free, uses no target data (LoRA only)

Steps are reported per approach: ``select`` (the own expert), ``tune`` and ``total``; LoraHub's
search costs forward passes only (``search_evals``).
"""

from __future__ import annotations

import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from pitune_core.model.backbone import UnifiedBackbone
from pitune_core.model.device import seed_everything
from pitune_core.model.experts import (EXPERT_FORMAT, TrainConfig, attach, evaluate, get_method, prepare_task,
                                       save_expert, train_expert, train_loop)
from pitune_core.tune.interpolation import InterpolatedExperts, InterpolationError, parse_weights
from pitune_core.data.tasks import get_task
from pitune_core.spec.parse import check_not_own_source
from pitune_core.spec.vocab import (APPROACHES, APPROACHES_BY_NAME, BASELINES, BUDGET_RULES, DEFAULT_K,  # noqa: F401
                                    DEFAULT_SHOTS, LORA_ONLY, PEFT_MERGES, PI_STYLE, SELECTING)
from pitune_core.model.experts import read_expert_meta
from pitune_core.predict import embeddings as predict_embeddings  # fisher_information looked up when called
from pitune_core.predict.similarity import fisher_similarity
from pitune_core.tune import robustness as tune_robustness  # score_robustness looked up when called (tests replace it)

# every approach :func:`run_method` knows, the shipped study's list (BASELINES) and the properties that
# decide how each runs are the spec's records (:data:`pitune_core.spec.vocab.APPROACH_RECORDS`)
WEIGHT_LR = 5e-2  # mixing logits learn faster than adapter weights
LORAHUB_BOUND = 1.5
LORAHUB_L1 = 0.05
LORAHUB_EVALS = 40
LORAHUB_MAX_EXAMPLES = 128  # examples of the run's training data LoraHub's loss is measured on


@dataclass
class Recipe:
    """How π-Tuning runs: the paper's recipe by default; each field is an ablation switch."""

    own_expert: bool = True  # the target's own expert among the interpolated ones
    granularity: str = "position"  # softmax weights per layer and adapter position, or "global"
    train_experts: bool = True  # experts tuned jointly with the weights (False: weights only)
    select_fraction: float = 0.5  # share of the step budget that trains the own expert
    fisher_max: int = 128  # examples of the run's data the own expert's Fisher is taken on (at most)
    budget: str = "equal"  # spec.vocab.BUDGET_RULES: every approach tunes the whole budget after selection

    def __post_init__(self):
        if self.budget not in BUDGET_RULES:
            raise ValueError(f"unknown budget rule {self.budget!r}; choose one of {', '.join(BUDGET_RULES)}")


@dataclass
class Sources:
    """The source experts of one method, the study's predicted similarities between tasks, and
    (for protocol runs) the sources' own embeddings, against which a target embedded from its shots
    is compared."""

    expert_dirs: dict[str, str]
    names: list[str]
    sim: np.ndarray  # (n, n) predicted similarity (Fisher by default) from the full-data study
    embeddings: object | None = None  # TaskEmbeddings of the source experts (Fisher), or None
    #: experts of the study that are not offered as sources ({task: the gate's one-line reason},
    #: :func:`pitune_core.common.admission`); never in ``expert_dirs``
    gated: dict[str, str] = field(default_factory=dict)
    #: the library's adapter configuration (its experts' ``method_config``, without name and lr): a run's
    #: own expert and target-only are trained with it, so the own expert has the sources' parameters
    #: (interpolation and Fisher ranking compare them group by group); None: the method's defaults
    method_config: dict | None = None
    #: an imported library's ranking of its adapters by their similarity to a target's own expert (a peft
    #: model in memory) from the adapters' weights alone (:func:`pitune_core.tune.library.library_sources`);
    #: used by :func:`target_side` where there are no source embeddings
    ranker: Callable[[object], list[tuple[str, float]]] | None = None

    def method_overrides(self) -> dict:
        return dict(self.method_config or {})

    def ranked(self, target: str) -> list[tuple[str, float]]:
        """Other tasks with an expert, most similar first (ties by name); target excluded.

        This reads the study's similarity row of the target, made from its full-data expert: it is
        the legacy selection, not the protocol's (see :func:`target_side`).
        """
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
        for n in (target, source):
            if n not in self.names:  # readable, not list.index's "'x' is not in list"
                raise InterpolationError(f"{n!r} has no predicted similarity in this study (it is not listed in "
                                         f"similarity.csv); rebuild the predictions or choose another task")
        return float(self.sim[self.names.index(target), self.names.index(source)])

    def library(self, target: str) -> list[str]:
        """Every source expert except the target's own (sorted)."""
        return sorted(n for n in self.expert_dirs if n != target)


def budget_for(shots: int | None, seed: int) -> TrainConfig:
    """One training budget per regime, shared by every approach.

    Few-shot: 5 epochs, clamped to [30, 100] steps. Full data: the budget the study's experts get
    (3 epochs, at most 400 steps; 188 steps for 1,000 examples).
    """
    if shots is None:
        return TrainConfig(seed=seed)
    return TrainConfig(seed=seed, epochs=5.0, min_steps=30, max_steps=100)


def fixed_steps(cfg: TrainConfig, steps: int) -> TrainConfig:
    return replace(cfg, min_steps=steps, max_steps=steps)


def run_data(target: str, backbone: UnifiedBackbone, shots: int | None, seed: int):
    """(spec, tensors, the run's training tensors): ``shots`` per class sampled with ``seed``, or all."""
    spec = get_task(target)
    data, tensors = prepare_task(spec, backbone)
    train_t = tensors["train"] if shots is None else tensors["train"].subset(data.few_shot(shots, seed=seed))
    return spec, tensors, train_t


def split_budget(total: int, recipe: Recipe) -> tuple[int, int]:
    """(own-expert steps, tuning steps) of a selecting approach for a budget of ``total`` steps.

    ``recipe.budget == "equal"``: the own expert (selection) takes ``select_fraction`` of ``total`` on top,
    and tuning gets all of ``total``, as every other approach does. ``"split"`` (the previous studies):
    the two add up to ``total``."""
    own = int(min(total - 1, max(1, round(recipe.select_fraction * total))))
    return own, (total if recipe.budget == "equal" else total - own)


# ----------------------------------------------------------------------------- target side

@dataclass
class TargetSide:
    """What a run knows about its target, all of it computed from the run's training data."""

    own_dir: str  # the own expert (trained on the run's data)
    own_steps: int
    ranking: list[tuple[str, float]]  # sources by similarity to the own expert's Fisher
    selection: str  # "shots" (protocol) or "study" (legacy: the study's full-data similarity)
    num_train: int


def fisher_on(model, backbone: UnifiedBackbone, spec, train_t, n_max: int, seed: int,
              batched: bool = True) -> dict[str, np.ndarray]:
    """Diagonal empirical Fisher of ``model``'s adapter on (at most ``n_max`` of, a seeded sample)
    ``train_t``: :func:`pitune_core.predict.embeddings.fisher_information`, batched per-example
    gradients by default (equal to the one-example loop, ``batched=False``, up to float rounding)."""
    import torch

    g = seed_everything(seed)
    idx = torch.randperm(len(train_t), generator=g)[: min(n_max, len(train_t))]
    return predict_embeddings.fisher_information(model, backbone, train_t.subset(idx), list(spec.verbalizers), batched=batched)


def rank_by_embedding(target: str, own: dict[str, np.ndarray], sources: Sources,
                      include_gated: bool = False) -> list[tuple[str, float]]:
    """Sources ranked by Fisher similarity of their stored embedding to ``own`` (ties by name);
    ``include_gated``: the experts the gate does not offer too (a placement draws the task beside
    every task of the study; only the offered ones are ever its sources).

    The stored row of the target itself (its full-data embedding) is never read."""
    emb = sources.embeddings
    cands = [n for n in emb.names if n != target and (n in sources.expert_dirs or (include_gated and n in sources.gated))]
    if not cands:
        raise InterpolationError(f"no source embeddings besides {target!r} in this study")
    if set(own) != set(emb.groups) or any(own[g].shape[0] != emb.groups[g].shape[1] for g in emb.groups):
        raise InterpolationError("the study's source embeddings have other parameter groups than the target's "
                                 "own expert (another adapter configuration); they cannot be compared")
    rows = [emb.names.index(n) for n in cands]
    groups = {g: np.vstack([emb.groups[g][rows], own[g][None, :]]) for g in emb.groups}
    sim = fisher_similarity(groups, dtype="float64")[-1, :-1]
    return sorted(zip(cands, (float(s) for s in sim)), key=lambda x: (-x[1], x[0]))


#: the named stages of a run's (or a placement's) target side, as progress callbacks report them
OWN_EXPERT_STAGE = "own expert: trained on the run's data"
OWN_FISHER_STAGE = "own Fisher: on the run's data"
DATA_STAGE = "data: loaded (a task's first use downloads its archive and extracts its features)"


def train_own_expert(target: str, method: str, backbone: UnifiedBackbone, train_t, seed: int, steps: int,
                     out: str | Path, shots: int | None, method_overrides: dict | None = None,
                     on_step: Callable[[dict], None] | None = None) -> tuple[object, int]:
    """The target's own expert, trained for ``steps`` on the run's data and saved (peft format), with the
    library's adapter configuration (``method_overrides``: :meth:`Sources.method_overrides`); ``on_step``
    hears each step as the stage :data:`OWN_EXPERT_STAGE`."""
    spec = get_task(target)
    m = get_method(method, **(method_overrides or {}))
    seed_everything(seed)
    model = attach(backbone.fresh_trunk(), m).to(backbone.device)
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    cfg = fixed_steps(TrainConfig(seed=seed), steps)
    cb = (lambda p: on_step({**p, "stage": OWN_EXPERT_STAGE})) if on_step else None
    losses = train_loop(backbone, model, train_t, list(spec.verbalizers), params, m.lr, cfg, cb)
    meta = {"format": EXPERT_FORMAT, "task": spec.name, "modality": spec.modality, "method": m.name,
            "method_config": asdict(m), "train_config": asdict(cfg), "seed": seed, "shots": shots,
            "num_train": len(train_t), "backbone_id": backbone.backbone_id, "steps": len(losses),
            "role": "own expert of a transfer run (trained on the run's data only)", "metrics": {},
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    save_expert(model, out, meta)
    return model, len(losses)


def target_side(target: str, sources: Sources, backbone: UnifiedBackbone, method: str, shots: int | None,
                seed: int, own_steps: int, workdir: str | Path, recipe: Recipe = Recipe(),
                on_step: Callable[[dict], None] | None = None) -> TargetSide:
    """Own expert + Fisher + source ranking, from the run's training data only; ``on_step`` hears
    the stages :data:`OWN_EXPERT_STAGE` (with its steps) and :data:`OWN_FISHER_STAGE` (with the
    number of examples it is taken on)."""
    spec, _, train_t = run_data(target, backbone, shots, seed)
    model, steps = train_own_expert(target, method, backbone, train_t, seed, own_steps, Path(workdir) / "own", shots,
                                    sources.method_overrides(), on_step=on_step)
    if sources.embeddings is not None:
        n = min(recipe.fisher_max, len(train_t))
        if on_step:
            on_step({"stage": OWN_FISHER_STAGE, "step": 0, "total": n})
        own = fisher_on(model, backbone, spec, train_t, recipe.fisher_max, seed)
        if on_step:
            on_step({"stage": OWN_FISHER_STAGE, "step": n, "total": n})
        ranking, selection = rank_by_embedding(target, own, sources), "shots"
    elif sources.ranker is not None:  # an imported library: its adapters ranked from the weights
        ranking, selection = [(n, s) for n, s in sources.ranker(model) if n != target], "shots"
    else:
        ranking, selection = sources.ranked(target), "study"
    return TargetSide(str(Path(workdir) / "own"), steps, ranking, selection, len(train_t))


def resolve_sources(target: str, sources: Sources, k: int | None, names: list[str] | None) -> list[tuple[str, float]]:
    if names:
        refused = [f"{n}: {sources.gated[n]}" for n in names if n in sources.gated]
        if refused:
            raise InterpolationError("; ".join(refused))
        unknown = [n for n in names if n not in sources.expert_dirs]
        if unknown:
            raise InterpolationError(f"no expert for source(s) {', '.join(unknown)} in this study; "
                                     f"available: {', '.join(sorted(sources.expert_dirs))}")
        check_not_own_source(target, names, InterpolationError)
        if k is not None and k != len(names):
            raise InterpolationError(f"k={k} but {len(names)} sources were named")
        return [(n, sources.similarity(target, n)) for n in names]
    return sources.top_k(target, DEFAULT_K if k is None else k)


# ----------------------------------------------------------------------------- π-Tuning core

def interpolate_and_tune(target: str, source_list: list[tuple[str, float]], sources: Sources,
                         backbone: UnifiedBackbone, shots: int | None, seed: int, weights="uniform",
                         train_weights: bool = True, train_experts: bool = True, tune: bool = True,
                         on_step: Callable[[dict], None] | None = None, record_every: int = 5,
                         own_dir: str | Path | None = None, granularity: str = "position",
                         steps: int | None = None):
    """The π-Tuning core: returns (InterpolatedExperts, metrics, weights history).

    ``own_dir`` adds the target's own expert (similarity 1 for ``auto`` weights) after the
    sources; ``steps`` fixes the number of tuning steps (default: the regime's budget).
    """
    if on_step:  # a task's first use downloads its archive and extracts image features (~1 min)
        on_step({"stage": DATA_STAGE})
    spec, tensors, train_t = run_data(target, backbone, shots, seed)
    seed_everything(seed)
    dirs = [sources.expert_dirs[n] for n, _ in source_list]
    labels = [n for n, _ in source_list]
    sims = [s for _, s in source_list]
    if own_dir is not None:
        dirs.append(str(own_dir))
        labels.append(f"{target} (own)")
        sims.append(1.0)
    interp = InterpolatedExperts(backbone, dirs, weights=parse_weights(weights, len(dirs)), similarities=sims,
                                 train_weights=train_weights, train_experts=train_experts,
                                 granularity=granularity, labels=labels)
    history = [{"step": 0, "weights": interp.weights().tolist()}]
    losses: list[float] = []
    if tune and steps != 0 and interp.trainable_parameters():
        cfg = budget_for(shots, seed)
        if steps is not None:
            cfg = fixed_steps(cfg, steps)
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
        groups = [g for g in groups if g["params"]]
        losses = train_loop(backbone, trunk, train_t, list(spec.verbalizers), groups, groups[0]["lr"], cfg, step_cb)
    model = interp.bake()
    metrics = {"val": evaluate(backbone, model, tensors["val"], spec),
               "test": evaluate(backbone, model, tensors["test"], spec), "steps": len(losses),
               "final_loss": losses[-1] if losses else None, "num_train": len(train_t)}
    return interp, metrics, history


# ----------------------------------------------------------------------------- baselines

def _full_finetune(target: str, backbone: UnifiedBackbone, shots: int | None, seed: int, steps: int) -> dict:
    spec, tensors, train_t = run_data(target, backbone, shots, seed)
    seed_everything(seed)
    trunk = backbone.fresh_trunk()
    trunk.requires_grad_(True)
    trunk.eval()
    train_loop(backbone, trunk, train_t, list(spec.verbalizers), list(trunk.parameters()), 3e-5,
               fixed_steps(budget_for(shots, seed), steps))
    return {"test": evaluate(backbone, trunk, tensors["test"], spec), "model": trunk}


def _peft_merge(target: str, source_list, sources: Sources, backbone: UnifiedBackbone, shots, seed, kind: str,
                steps: int) -> dict:
    from peft import PeftModel

    spec, tensors, train_t = run_data(target, backbone, shots, seed)
    names = [n for n, _ in source_list]

    for n in names:  # peft reads these adapter_config.json files: validated against pitune's schema first
        read_expert_meta(sources.expert_dirs[n])
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
    if steps > 0:
        train_loop(backbone, model, train_t, list(spec.verbalizers), params, get_method("lora").lr,
                   fixed_steps(budget_for(shots, seed), steps))
    return {"test": evaluate(backbone, model, tensors["test"], spec), "model": model}


def _adapter_tensors(expert_dir: str | Path) -> dict[str, "object"]:
    from safetensors.torch import load_file

    return load_file(str(Path(expert_dir) / "adapter_model.safetensors"))


def lorahub(target: str, sources: Sources, backbone: UnifiedBackbone, shots: int | None, seed: int,
            tune_steps: int = 0, evals: int = LORAHUB_EVALS) -> dict:
    """LoraHub over the source LoRA library: NGOpt weights in [-1.5, 1.5] minimising the run's
    loss + 0.05·L1 (``evals`` loss evaluations), A and B merged by them; then ``tune_steps``."""
    import nevergrad as ng
    import torch
    import torch.nn.functional as F

    spec, tensors, train_t = run_data(target, backbone, shots, seed)
    names = sources.library(target)
    metas = [read_expert_meta(sources.expert_dirs[n]) for n in names]
    if any(m["method"] != "lora" for m in metas):
        raise InterpolationError("lorahub applies to LoRA experts only")
    cfgs = {repr(sorted(m["method_config"].items())) for m in metas}
    if len(cfgs) != 1:
        raise InterpolationError("lorahub needs source LoRAs of one configuration (rank, modules)")
    m = get_method("lora", **{k: v for k, v in metas[0]["method_config"].items() if k != "name"})
    stacks = [_adapter_tensors(sources.expert_dirs[n]) for n in names]
    seed_everything(seed)
    model = attach(backbone.fresh_trunk(), m).to(backbone.device)
    model.eval()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    key_of = {n: n.replace(".default", "") for n in params}
    missing = [k for k in key_of.values() if k not in stacks[0]]
    if missing:
        raise InterpolationError(f"source LoRA files do not hold {missing[0]}")
    stacked = {n: torch.stack([s[key_of[n]] for s in stacks]).to(backbone.device) for n in params}

    @torch.no_grad()
    def set_weights(w):
        wt = torch.as_tensor(np.asarray(w, dtype=np.float32), device=backbone.device)
        for n, p in params.items():
            p.copy_(torch.einsum("k,k...->...", wt, stacked[n]))

    g = np.random.default_rng(seed)
    loss_idx = np.sort(g.permutation(len(train_t))[:LORAHUB_MAX_EXAMPLES])
    loss_t = train_t.subset(loss_idx)
    verbal = list(spec.verbalizers)

    @torch.no_grad()
    def objective(w) -> float:
        set_weights(w)
        label_emb = backbone.encode_texts(verbal, model)
        total = 0.0
        for i in range(0, len(loss_t), 64):
            inputs, y = loss_t.batch(range(i, min(i + 64, len(loss_t))))
            total += float(F.cross_entropy(backbone.logits(inputs, label_emb, model), y.to(backbone.device),
                                           reduction="sum"))
        return total / len(loss_t) + LORAHUB_L1 * float(np.abs(w).sum())

    param = ng.p.Array(init=np.zeros(len(names)), lower=-LORAHUB_BOUND, upper=LORAHUB_BOUND)
    param.random_state.seed(seed)
    opt = ng.optimizers.NGOpt(parametrization=param, budget=evals, num_workers=1)
    with warnings.catch_warnings():  # nevergrad's inner optimisers warn about their own settings
        warnings.simplefilter("ignore")
        best = opt.minimize(objective)
    w = [float(x) for x in best.value]
    set_weights(w)
    if tune_steps > 0:
        train_loop(backbone, model, train_t, verbal, list(params.values()), m.lr,
                   fixed_steps(budget_for(shots, seed), tune_steps))
    return {"test": evaluate(backbone, model, tensors["test"], spec), "weights": w, "sources": names,
            "search_evals": evals, "model": model}


def arrow(target: str, sources: Sources, backbone: UnifiedBackbone, k: int, seed: int) -> dict:
    """peft's Arrow routing over the source LoRA library (training-free; no target data used)."""
    from peft import ArrowConfig, create_arrow_model

    spec = get_task(target)
    _, tensors = prepare_task(spec, backbone)
    names = sources.library(target)
    seed_everything(seed)
    model = create_arrow_model(backbone.fresh_trunk(), [sources.expert_dirs[n] for n in names],
                               ArrowConfig(top_k=min(k, len(names)), router_temperature=1.0, rng_seed=seed))
    model.to(backbone.device).eval()
    return {"test": evaluate(backbone, model, tensors["test"], spec), "sources": names, "model": model}


# ----------------------------------------------------------------------------- one approach

def run_method(name: str, target: str, sources: Sources, backbone: UnifiedBackbone, method: str = "lora",
               k: int = DEFAULT_K, shots: int | None = DEFAULT_SHOTS, seed: int = 0, recipe: Recipe | None = None,
               workdir: str | Path | None = None, robustness: dict | None = None, side_cache=None) -> dict:
    """Score one approach; returns ``{"accuracy", "metric", "score", "sources", "weights", "steps", ...}``.

    ``side_cache``: a :class:`pitune_core.tune.side_cache.SideCache` that keeps the target side (own
    expert, Fisher, ranking) of each (target, shots, seed) for the other approaches of that cell; the
    result is the same with or without it. A selecting approach's row says what its selection took
    (``select_time_s``, included in ``time_s`` also when the side was reused) and ``side_reused``.

    ``robustness``: also score the approach's final model, with no further training, on the target's
    shifted and corrupted test sets (:func:`pitune_core.tune.robustness.score_robustness`, these its
    keyword options; ``{}``: the defaults), as the row's ``robustness``; None (default): not scored,
    and the row has no such key."""
    if name not in APPROACHES:
        raise InterpolationError(f"unknown approach {name!r}; choose from {', '.join(APPROACHES)}")
    if name in LORA_ONLY and method != "lora":
        raise InterpolationError(f"{name} applies to LoRA experts only")
    recipe = recipe or Recipe()
    spec = get_task(target)
    t0 = time.time()
    _, _, train_t = run_data(target, backbone, shots, seed)
    total = budget_for(shots, seed).steps_for(len(train_t))
    own_steps, tune_steps = split_budget(total, recipe)
    tmp = Path(tempfile.mkdtemp(prefix="pitune-run-", dir=workdir))
    try:
        info: dict = {"selection": None}
        if APPROACHES_BY_NAME[name].own_expert_first:
            if side_cache is None:
                t_side = time.time()
                side = target_side(target, sources, backbone, method, shots, seed, own_steps, tmp, recipe)
                side_s, reused = round(time.time() - t_side, 2), False
            else:
                side, side_s, reused = side_cache.get(target, sources, backbone, method, shots, seed, own_steps,
                                                      recipe, train_t)
            info.update(select_time_s=side_s, side_reused=reused)
            info["selection"] = side.selection if name not in ("random-k", "all-experts") else "none"
            if k < 1 or k > len(side.ranking):
                raise InterpolationError(f"k={k} is out of range: {target} has {len(side.ranking)} candidate sources")
            top = side.ranking[:k]
            steps = {"select": side.own_steps, "tune": tune_steps}
        else:
            side, top, steps = None, [], {"select": 0, "tune": total}
        if name in PI_STYLE:
            src = top
            if name == "random-k":
                rng = np.random.default_rng(seed + 1000)
                pool = sorted(side.ranking)
                src = [pool[i] for i in sorted(rng.choice(len(pool), size=k, replace=False))]
            elif name == "all-experts":
                src = sorted(side.ranking)
            own = recipe.own_expert and APPROACHES_BY_NAME[name].mixes_own
            tuned = APPROACHES_BY_NAME[name].tunes
            if not tuned:
                steps["tune"] = 0
            interp, metrics, hist = interpolate_and_tune(
                target, src, sources, backbone, shots, seed, weights="uniform",
                train_weights=APPROACHES_BY_NAME[name].learns_weights,
                train_experts=recipe.train_experts and name != "pi-tuning-weights-only", tune=tuned,
                own_dir=side.own_dir if own else None,
                granularity="global" if name == "pi-tuning-global" else recipe.granularity, steps=steps["tune"])
            info.update(sources=[n for n, _ in src], weights=hist[-1]["weights"], own_expert=own)
            model = interp.bake()
        elif name == "best-single":
            res = train_expert(spec, method, backbone, shots=shots, seed=seed,
                               train_config=fixed_steps(budget_for(shots, seed), tune_steps),
                               init_from=sources.expert_dirs[top[0][0]], evaluate_zero_shot=False)
            metrics, model = res.meta["metrics"], res.model
            info["sources"] = [top[0][0]]
        elif name == "target-only":
            res = train_expert(spec, method, backbone, shots=shots, seed=seed,
                               train_config=fixed_steps(budget_for(shots, seed), total), evaluate_zero_shot=False,
                               method_overrides=sources.method_overrides())
            metrics, model = res.meta["metrics"], res.model
            info["sources"] = []
        elif name == "full-finetune":
            metrics = _full_finetune(target, backbone, shots, seed, total)
            model = metrics.pop("model")
            info["sources"] = []
        elif name in PEFT_MERGES:
            metrics = _peft_merge(target, top, sources, backbone, shots, seed, name.split("-")[1], tune_steps)
            model = metrics.pop("model")
            info["sources"] = [n for n, _ in top]
        elif name in ("lorahub", "lorahub-tuned"):
            tuned = APPROACHES_BY_NAME[name].tunes
            steps = {"select": 0, "tune": total if tuned else 0}
            metrics = lorahub(target, sources, backbone, shots, seed, tune_steps=steps["tune"])
            model = metrics.pop("model")
            info.update(sources=metrics["sources"], weights=metrics["weights"], search_evals=metrics["search_evals"])
        else:  # arrow
            steps = {"select": 0, "tune": 0}
            metrics = arrow(target, sources, backbone, k, seed)
            model = metrics.pop("model")
            info.update(sources=metrics["sources"], selection="none")
        # the approach's own time (scoring robustness is not part of it); a reused side's build time counts
        # in every run that uses it
        elapsed = round(time.time() - t0 + (info["select_time_s"] if info.get("side_reused") else 0.0), 2)
        if robustness is not None:
            info["robustness"] = tune_robustness.score_robustness(target, backbone, model, **robustness)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    steps["total"] = steps["select"] + steps["tune"]
    return {"target": target, "approach": name, "method": method, "shots": shots, "seed": seed, "k": k,
            "accuracy": metrics["test"]["accuracy"], "metric": spec.metric, "score": metrics["test"][spec.metric],
            "steps": steps, "num_train": len(train_t), "time_s": elapsed, **info}
