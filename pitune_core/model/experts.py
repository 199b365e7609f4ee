"""Parameter-efficient experts on the frozen backbone, through ``peft``.

One small config dataclass per expert type (:mod:`pitune_core.model.expert_types`); an
expert is a peft adapter on the MiniLM trunk, saved in peft's format
(``adapter_config.json`` + ``adapter_model.safetensors``) plus ``pitune_expert.json`` with its task,
method, seed, data sizes and metrics. Anyone with peft can load the adapter; pitune checks the
backbone identity and file integrity before it does.

Usage::

    bb = UnifiedBackbone.load()
    result = train_expert("movie_sentiment", method="lora", backbone=bb, out="experts/movie")
    model, meta = load_expert("experts/movie", bb)
"""

from __future__ import annotations

import contextlib
import json
import resource
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from pitune_core import __version__
from pitune_core.common import replace_dir
from pitune_core.spec.vocab import EXPERT_META_FILE
from pitune_core.data.tasks import TaskData, TaskSpec, get_task
from pitune_core.model.backbone import (
    Inputs,
    TaskTensors,
    UnifiedBackbone,
    blank_image_features,
    task_features,
    task_tensors,
)
from pitune_core.model import expert_schema as schema
from pitune_core.model.device import seed_everything
from pitune_core.model.expert_schema import check_method_config, stable_trunk_id, validated_peft_config
from pitune_core.model.expert_types import (IA3Method, LoraMethod, METHODS, PromptMethod,  # noqa: F401
                                            ExpertError, get_method, method_of_peft_config)
from pitune_core.model.metrics import majority_baseline, score

# peft (<= 0.21) reads transformers' deprecated ``is_gradient_checkpointing`` alias in
# PeftModel.__init__; pitune never calls it, so that one FutureWarning is silenced here, by message
warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)

EXPERT_META = EXPERT_META_FILE  # the spec owns the name
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
EXPERT_FORMAT = "pitune-expert/1"
ADAPTER_TAGS = ("lora_", "prompt_encoder.", "ia3_")  # names of adapter tensors inside a peft model


def attach(trunk: torch.nn.Module, method) -> torch.nn.Module:
    """Wrap a (private) trunk copy with a fresh trainable peft adapter."""
    from peft import get_peft_model

    return get_peft_model(trunk, method.peft_config())


# ----------------------------------------------------------------------------- training

@dataclass
class TrainConfig:
    """How long and how fast to train. ``epochs`` counts passes over the training set; the step
    count is clamped to [min_steps, max_steps] so that few-shot and full data get a sane budget."""

    epochs: float = 10.0  # image experts need it: 188 steps left a MNIST expert 6 points under 600 (issue 27)
    batch_size: int = 16
    lr: float | None = None  # None: the method's default
    min_steps: int = 30
    max_steps: int = 600
    seed: int = 0
    eval_batch_size: int = 64

    def steps_for(self, n: int) -> int:
        return int(min(self.max_steps, max(self.min_steps, round(self.epochs * n / self.batch_size))))


ProgressFn = Callable[[dict], None]


def train_loop(backbone: UnifiedBackbone, model: torch.nn.Module, train: TaskTensors, verbalizers: list[str],
               params: list, lr: float, cfg: TrainConfig,
               on_step: ProgressFn | None = None, extra_loss: Callable[[], torch.Tensor] | None = None,
               label_texts_fn=None) -> list[float]:
    """Minimise label-as-text cross-entropy over ``params``; returns the loss per step.

    ``params`` is a list of parameters or of AdamW parameter groups (each with its own ``lr``).

    The trunk stays in eval mode (its own dropout off); only an adapter's dropout (``LoraConfig.lora_dropout``,
    0 by default) is switched on while training (:func:`adapter_dropout`), seeded like the rest of the run:
    before, a LoRA dropout a user configured was silently never applied. Each step encodes
    the batch and the label texts (which the adapted trunk changes every step) in ONE packed trunk
    call (:meth:`UnifiedBackbone.encode_many`); losses stay on the device and are read back only
    when a progress callback needs them, or at the end (``bench/bench_training.py`` measures it).
    """
    if len(train) == 0:
        raise ValueError("cannot train on an empty data set")
    g = seed_everything(cfg.seed)
    steps = cfg.steps_for(len(train))
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, steps // 10)))
    labels_in = Inputs(list(verbalizers), None, len(verbalizers))
    # a non-finite loss is caught at its step on CPU (free) and within ``check_every`` steps on CUDA
    # (each check waits for the device)
    check_every = 1 if backbone.device.type == "cpu" or on_step is not None else 10
    losses: list[torch.Tensor] = []

    def check(upto: int) -> None:
        recent = torch.stack(losses[-check_every:] if upto < steps else losses)
        bad = (~torch.isfinite(recent)).nonzero()
        if len(bad):
            first = upto - len(recent) + int(bad[0, 0])
            raise FloatingPointError(f"training diverged at step {first}: loss is {float(recent[bad[0, 0]])}; "
                                     f"lower the learning rate")

    with adapter_dropout(model):
        order = torch.randperm(len(train), generator=g)
        pos = 0
        for step in range(steps):
            if pos + cfg.batch_size > len(order):
                order, pos = torch.randperm(len(train), generator=g), 0
            idx = order[pos:pos + cfg.batch_size]
            pos += cfg.batch_size
            inputs, labels = train.batch(idx)
            x, label_emb = backbone.encode_many([inputs, labels_in], model)
            loss = F.cross_entropy(backbone.logit_scale * x @ label_emb.T, labels.to(x.device))
            if extra_loss is not None:
                loss = loss + extra_loss()
            losses.append(loss.detach())
            if (step + 1) % check_every == 0:
                check(step + 1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if on_step is not None:
                on_step({"stage": "train", "step": step + 1, "total": steps, "loss": float(losses[-1])})
        check(steps)
        return torch.stack(losses).float().cpu().tolist()


@contextlib.contextmanager
def adapter_dropout(model: torch.nn.Module):
    """Within the block, the adapter's own dropout modules (peft's ``lora_dropout``) are in training mode
    and everything else stays as it was (the frozen trunk in eval mode); afterwards they are back in eval mode."""
    drops = [m for n, m in model.named_modules() if n.split(".")[-1] == "lora_dropout" or ".lora_dropout." in n]
    for m in drops:
        m.train()
    try:
        yield drops
    finally:
        for m in drops:
            m.eval()


@torch.inference_mode()
def predict(backbone: UnifiedBackbone, model: torch.nn.Module | None, data: TaskTensors, verbalizers: list[str],
            batch_size: int = 256) -> np.ndarray:
    """Class predictions by label-as-text matching (``model=None``: the bare backbone).

    Inference mode, label texts encoded once, examples taken in order of token length so that a
    batch holds similar lengths (little padding where a trunk runs padded); predictions come back
    in the data's order.
    """
    trunk = model if model is not None else backbone.base_trunk()
    if len(data) == 0:
        return np.zeros(0, dtype=np.int64)
    label_emb = backbone.encode_texts(verbalizers, trunk)
    order = (np.argsort([len(t) for t in backbone.token_ids(data.texts)], kind="stable")
             if data.texts is not None else np.arange(len(data)))
    preds = torch.empty(len(data), dtype=torch.long)
    for i in range(0, len(data), batch_size):
        idx = order[i:i + batch_size]
        inputs, _ = data.batch(idx)
        preds[torch.as_tensor(idx)] = backbone.logits(inputs, label_emb, trunk).argmax(-1).cpu()
    return preds.numpy()


def evaluate(backbone: UnifiedBackbone, model, data: TaskTensors, spec: TaskSpec) -> dict[str, float]:
    return score(data.labels.numpy(), predict(backbone, model, data, list(spec.verbalizers)), spec.num_classes)


def peak_memory_mb() -> float:
    """Peak resident memory of this process (and CUDA peak allocation when on GPU)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    if torch.cuda.is_available():
        rss += torch.cuda.max_memory_allocated() / 2**20
    return round(rss, 1)


# ----------------------------------------------------------------------------- save / load

def _versions() -> dict[str, str]:
    import peft
    import transformers

    return {"pitune": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__}


def save_expert(model, out: str | Path, meta: dict) -> Path:
    """Write adapter + metadata atomically: the directory appears complete or not at all."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))

    try:
        model.save_pretrained(str(tmp))  # peft checks the local trunk path here (no Hub look-up)
        cfg_path = tmp / "adapter_config.json"
        if cfg_path.exists():  # record the trunk's stable id, not this machine's path to it
            cfg = json.loads(cfg_path.read_text())
            cfg["base_model_name_or_path"] = stable_trunk_id()
            cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
        (tmp / EXPERT_META).write_text(json.dumps(meta, indent=2, sort_keys=True))
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_expert_meta(path: str | Path) -> dict:
    """Validate an expert directory's files and return its metadata (no model is built)."""
    path = Path(path)
    if not path.is_dir():
        raise ExpertError(f"expert directory {path} does not exist")
    missing = [f for f in (*ADAPTER_FILES, EXPERT_META) if not (path / f).exists()]
    if missing:
        raise ExpertError(f"{path} is not a complete pitune expert: missing {', '.join(missing)}. "
                          f"Retrain it with `pitune train-expert`.")
    try:  # bounded reads of regular files only; every field checked against what pitune writes
        meta = schema.read_json_bounded(path / EXPERT_META)
        adapter_cfg = schema.read_json_bounded(path / "adapter_config.json")
        if not isinstance(meta, dict) or not isinstance(adapter_cfg, dict):
            raise schema.ExpertSchemaError("metadata files must be JSON objects")
        if meta.get("format") != EXPERT_FORMAT:
            raise schema.ExpertSchemaError(f"unknown expert format {str(meta.get('format'))[:80]!r} "
                                           f"(expected {EXPERT_FORMAT})")
        if method_of_peft_config(adapter_cfg) != meta.get("method"):
            raise schema.ExpertSchemaError(f"adapter_config.json says {str(adapter_cfg.get('peft_type'))[:40]} but "
                                           f"the metadata says {str(meta.get('method'))[:40]!r}; the directory was "
                                           f"mixed up")
        schema.validate_expert_dir(path, EXPERT_META, EXPERT_FORMAT)  # sizes, schema, tensor names/shapes
    except schema.ExpertSchemaError as e:
        raise ExpertError(f"{path}: {e}. Retrain the expert with `pitune train-expert` or restore it.") from None
    try:
        from safetensors import safe_open

        with safe_open(str(path / "adapter_model.safetensors"), framework="pt") as f:
            for k in f.keys():
                t = f.get_tensor(k)
                if not torch.isfinite(t).all():
                    raise ExpertError(f"{path}: adapter tensor {k} contains NaN/inf (a diverged expert)")
    except ExpertError:
        raise
    except Exception as e:
        raise ExpertError(f"{path}/adapter_model.safetensors is corrupted or truncated ({e}). "
                          f"Retrain or restore the expert.") from e
    return meta


def load_expert(path: str | Path, backbone: UnifiedBackbone, trainable: bool = False):
    """Load an expert onto a private copy of the backbone's trunk: ``(peft_model, meta)``."""
    from peft import PeftModel


    meta = read_expert_meta(path)  # validated: sizes, schema, tensor names/shapes/dtypes, finite values
    if meta.get("backbone_id") != backbone.backbone_id:
        raise ExpertError(f"{path} was trained on backbone {meta.get('backbone_id')!r}, but the loaded backbone is "
                          f"{backbone.backbone_id!r}. Use the projector it was trained with, or retrain the expert.")
    # peft gets pitune's own config for the validated method_config, never the file's; it names
    # the local trunk, so peft has nothing to rename (and warn about)
    trunk = backbone.fresh_trunk()
    cfg = validated_peft_config(meta["method"], check_method_config(meta["method"], meta["method_config"]),
                                trunk.__dict__.get("name_or_path") or None)
    # peft refuses is_trainable=True for prompt-learning adapters, so load frozen and unfreeze the
    # adapter tensors ourselves (same result for LoRA and IA3)
    model = PeftModel.from_pretrained(trunk, str(path), is_trainable=False, config=cfg)
    if trainable:
        model.peft_config["default"].inference_mode = False
        for n, p in model.named_parameters():
            if any(tag in n for tag in ADAPTER_TAGS):
                p.requires_grad_(True)
    model.to(backbone.device)
    model.eval()
    return model, meta


# ----------------------------------------------------------------------------- the verbs

@dataclass
class ExpertResult:
    path: Path | None
    meta: dict
    model: object = field(repr=False, default=None)


def prepare_task(spec: TaskSpec, backbone: UnifiedBackbone) -> tuple[TaskData, dict[str, TaskTensors]]:
    data = spec.load()
    feats = task_features(data, config=backbone.vision)
    return data, {s: task_tensors(data, s, feats, backbone.vision) for s in ("train", "val", "test")}


def train_expert(task: str | TaskSpec, method: str = "lora", backbone: UnifiedBackbone | None = None,
                 shots: int | None = None, seed: int = 0, out: str | Path | None = None,
                 train_config: TrainConfig | None = None, method_overrides: dict | None = None,
                 init_from: str | Path | None = None, on_step: ProgressFn | None = None,
                 evaluate_zero_shot: bool = True, eval_limit: int | None = None,
                 evaluate_val: bool = True) -> ExpertResult:
    """Train one expert on a task (all training data, or ``shots`` per class) and evaluate it.

    All arguments are validated before any training starts. ``init_from`` starts from another
    expert's parameters (same method) instead of a fresh adapter: transfer. ``eval_limit`` scores
    val/test on a seeded random subset of that many examples (for large pairwise studies);
    ``evaluate_val=False`` skips the validation split where a caller reads the test score only (a
    transfer pair: its val pass was a fifth of the job's time, ``bench/bench_throughput.py``).
    """
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    m = get_method(method, **(method_overrides or {}))
    cfg = replace(train_config or TrainConfig(), seed=seed)  # never mutate the caller's config
    backbone = backbone or UnifiedBackbone.load()
    data, tensors = prepare_task(spec, backbone)
    train_t = tensors["train"]
    if shots is not None:
        train_t = train_t.subset(data.few_shot(shots, seed=seed))  # raises a clear error if too many
    if init_from is not None:
        model, src_meta = load_expert(init_from, backbone, trainable=True)
        if src_meta["method"] != m.name:
            raise ExpertError(f"cannot initialise a {m.name} expert from {init_from} ({src_meta['method']})")
    else:
        seed_everything(seed)
        model = attach(backbone.fresh_trunk(), m).to(backbone.device)
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    t0 = time.time()
    losses = train_loop(backbone, model, train_t, list(spec.verbalizers), params, cfg.lr or m.lr, cfg, on_step)
    train_time = time.time() - t0
    if on_step:
        on_step({"stage": "evaluate"})
    if eval_limit is not None:
        tensors = {s: (t.subset(np.sort(np.random.default_rng(0).permutation(len(t))[:eval_limit]))
                       if s != "train" and len(t) > eval_limit else t) for s, t in tensors.items()}
    metrics = {**({"val": evaluate(backbone, model, tensors["val"], spec)} if evaluate_val else {}),
               "test": evaluate(backbone, model, tensors["test"], spec),
               "majority_test": majority_baseline(data.train.labels, tensors["test"].labels.numpy(), spec.num_classes)}
    if evaluate_val:  # the library's gate compares the expert with these on its own val split
        metrics["majority_val"] = majority_baseline(data.train.labels, tensors["val"].labels.numpy(), spec.num_classes)
    if evaluate_zero_shot:
        metrics["zero_shot_test"] = evaluate(backbone, None, tensors["test"], spec)
        if evaluate_val:
            metrics["zero_shot_val"] = evaluate(backbone, None, tensors["val"], spec)
    meta = {"format": EXPERT_FORMAT, "task": spec.name, "modality": spec.modality, "method": m.name,
            "method_config": asdict(m), "train_config": asdict(cfg), "seed": seed, "shots": shots,
            "num_train": len(train_t), "num_val": len(tensors["val"]), "num_test": len(tensors["test"]),
            "headline_metric": spec.metric, "metrics": metrics, "backbone_id": backbone.backbone_id,
            "init_from": str(init_from) if init_from else None, "steps": len(losses),
            "final_loss": losses[-1], "train_time_s": round(train_time, 2), "peak_memory_mb": peak_memory_mb(),
            "device": str(backbone.device), "num_threads": torch.get_num_threads(),
            "trainable_params": sum(p.numel() for p in params), "versions": _versions(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    path = save_expert(model, out, meta) if out is not None else None
    return ExpertResult(path, meta, model)


def linear_probe(spec: TaskSpec, backbone: UnifiedBackbone, cs: tuple[float, ...] = (0.01, 0.1, 1.0),
                 max_iter: int = 3000) -> dict[str, float]:
    """The reference an image expert is held to: scikit-learn's logistic regression on the frozen image
    features the expert reads (every visual token, concatenated, standardised), fitted on the training
    split, its regularisation ``C`` chosen on val, scored on val and test in the task's headline metric.
    What the features alone allow a linear read-out: an expert far below it loses the image on its way
    through the projector and the trunk."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data, tensors = prepare_task(spec, backbone)
    if tensors["train"].visual is None:
        raise ValueError(f"{spec.name} has no images: a linear probe on image features needs an image task")
    x = {s: t.visual.float().flatten(1).numpy() for s, t in tensors.items()}
    best = None
    for c in cs:
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter)).fit(x["train"], data.train.labels)
        val = score(data.val.labels, clf.predict(x["val"]), spec.num_classes)[spec.metric]
        if best is None or val > best[0]:
            best = (val, c, clf)
    val, c, clf = best
    return {"probe_val": val, "probe_test": score(data.test.labels, clf.predict(x["test"]), spec.num_classes)[spec.metric],
            "probe_c": c}


def evaluate_expert(path: str | Path, backbone: UnifiedBackbone | None = None, split: str = "test",
                    blank_images: bool = False) -> dict:
    """Re-evaluate a saved expert on its task (optionally with every image blanked)."""
    backbone = backbone or UnifiedBackbone.load()
    model, meta = load_expert(path, backbone)
    spec = get_task(meta["task"])
    data, tensors = prepare_task(spec, backbone)
    t = tensors[split]
    if blank_images:
        t = t.blanked(blank_image_features(backbone.vision))
    return {"task": spec.name, "method": meta["method"], "split": split, "blank_images": blank_images,
            **evaluate(backbone, model, t, spec)}
