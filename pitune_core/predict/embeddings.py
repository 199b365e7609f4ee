"""Task embeddings: diagonal Fisher information of an expert's parameters (π-Tuning's predictor),
plus two baselines to compare it with — the expert's flattened weights and a data-only embedding.

Fisher: for N task samples (seeded), the squared gradient of the task loss with respect to every
adapter parameter, per sample, averaged. Because every expert lives on the same trunk, language,
vision and vision-language tasks are embedded in one space. Embeddings keep their parameter groups
(one per adapter tensor) because the paper's similarity is computed per group.

Stored as safetensors: one flat tensor per task, group names and sizes plus backbone, method, N and
seed in the file's metadata (JSON strings, never pickle).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from pitune_core.model.backbone import UnifiedBackbone
from pitune_core.model.device import seed_everything
from pitune_core.model.experts import load_expert, prepare_task, read_expert_meta
from pitune_core.data.tasks import get_task

KINDS = ("fisher", "weights", "data")


class EmbeddingError(ValueError):
    """Embeddings that cannot be compared (NaN/inf, mixed methods or backbones, bad files)."""

    def __init__(self, msg: str, tasks: list[str] | None = None):
        super().__init__(msg)
        self.tasks = tasks or []


@dataclass
class TaskEmbeddings:
    """Embeddings of several tasks: ``groups[g]`` is an (n_tasks, d_g) array, rows in ``names`` order."""

    names: list[str]
    groups: dict[str, np.ndarray]
    meta: dict = field(default_factory=dict)

    def flat(self) -> np.ndarray:
        return np.concatenate([self.groups[g] for g in self.groups], axis=1)

    def subset(self, names: list[str]) -> "TaskEmbeddings":
        idx = [self.names.index(n) for n in names]
        return TaskEmbeddings(list(names), {g: v[idx] for g, v in self.groups.items()}, dict(self.meta))


def adapter_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The trainable adapter tensors of a peft model, by short stable names."""
    out = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            out[name.replace("base_model.model.", "").replace(".default", "")] = p
    if not out:
        raise EmbeddingError("the expert has no trainable adapter parameters")
    return out


def fisher_embedding(expert_dir: str | Path, backbone: UnifiedBackbone, n_samples: int = 128, seed: int = 0,
                     split: str = "train") -> dict[str, np.ndarray]:
    """Diagonal empirical Fisher of the expert's parameters on its own task, per group."""
    model, meta = load_expert(expert_dir, backbone, trainable=True)
    spec = get_task(meta["task"])
    data, tensors = prepare_task(spec, backbone)
    t = tensors[split]
    if len(t) == 0:
        raise EmbeddingError(f"{spec.name}: the {split} split is empty", [spec.name])
    g = seed_everything(seed)
    idx = torch.randperm(len(t), generator=g)[: min(n_samples, len(t))]
    params = adapter_parameters(model)
    acc = {k: torch.zeros_like(p, dtype=torch.float64) for k, p in params.items()}
    verbal = list(spec.verbalizers)
    for i in idx.tolist():
        inputs, y = t.batch([i])
        label_emb = backbone.encode_texts(verbal, model)
        loss = F.cross_entropy(backbone.logits(inputs, label_emb, model), y.to(backbone.device))
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        for k, gr in zip(params, grads):
            if gr is not None:
                acc[k] += gr.detach().double() ** 2
    out = {k: (v / len(idx)).flatten().cpu().numpy() for k, v in acc.items()}
    bad = [k for k, v in out.items() if not np.isfinite(v).all()]
    if bad:
        raise EmbeddingError(f"{spec.name}: Fisher information is NaN/inf in {len(bad)} parameter groups "
                             f"(e.g. {bad[0]}); the expert probably diverged. Retrain it or leave the task out.",
                             [spec.name])
    return out


def weight_embedding(expert_dir: str | Path) -> dict[str, np.ndarray]:
    """The expert's own parameters, flattened per tensor (a baseline embedding)."""
    read_expert_meta(expert_dir)
    out = {}
    with safe_open(str(Path(expert_dir) / "adapter_model.safetensors"), framework="np") as f:
        for k in sorted(f.keys()):
            out[k.replace("base_model.model.", "")] = f.get_tensor(k).astype(np.float64).ravel()
    return out


@torch.no_grad()
def data_embedding(task: str, backbone: UnifiedBackbone, n_samples: int = 256, seed: int = 0) -> dict[str, np.ndarray]:
    """Mean pooled backbone features of the task's inputs (no expert; a data-only baseline)."""
    spec = get_task(task)
    _, tensors = prepare_task(spec, backbone)
    t = tensors["train"]
    g = seed_everything(seed)
    idx = torch.randperm(len(t), generator=g)[: min(n_samples, len(t))].tolist()
    embs = [backbone.encode(t.batch(idx[i:i + 64])[0]) for i in range(0, len(idx), 64)]
    return {"pooled": torch.cat(embs).mean(0).double().cpu().numpy()}


def random_embedding(names: list[str], dim: int = 64, seed: int = 0) -> TaskEmbeddings:
    """Random nonnegative vectors: the chance-level reference for prediction quality."""
    rng = np.random.default_rng(seed)
    return TaskEmbeddings(list(names), {"random": rng.random((len(names), dim))}, {"kind": "random", "seed": seed})


def stack(per_task: dict[str, dict[str, np.ndarray]], meta: dict) -> TaskEmbeddings:
    """Per-task group dicts → one TaskEmbeddings; refuses mismatched groups (other method/config)."""
    names = list(per_task)
    if not names:
        raise EmbeddingError("no tasks to embed")
    ref = per_task[names[0]]
    for n in names[1:]:
        if set(per_task[n]) != set(ref) or any(per_task[n][g].shape != ref[g].shape for g in ref):
            raise EmbeddingError(f"{n} has different parameter groups than {names[0]}: experts of different "
                                 f"methods or configurations cannot be compared", [n])
    groups = {g: np.stack([per_task[n][g] for n in names]) for g in ref}
    return TaskEmbeddings(names, groups, meta)


def embed_experts(expert_dirs: dict[str, str | Path], kind: str, backbone: UnifiedBackbone | None = None,
                  n_samples: int = 128, seed: int = 0, on_task=None) -> TaskEmbeddings:
    """Embed several tasks from their experts (``kind`` in fisher / weights / data)."""
    if kind not in KINDS:
        raise EmbeddingError(f"unknown embedding {kind!r}; choose one of {', '.join(KINDS)}")
    metas = {t: read_expert_meta(d) for t, d in expert_dirs.items()}
    methods = {m["method"] for m in metas.values()}
    backbones = {m["backbone_id"] for m in metas.values()}
    if len(methods) > 1:
        raise EmbeddingError(f"experts use different methods ({', '.join(sorted(methods))}); embed each method separately")
    if len(backbones) > 1:
        raise EmbeddingError(f"experts were trained on different backbones ({', '.join(sorted(backbones))}); "
                             f"they live in different parameter spaces")
    per_task, failed = {}, {}
    for t, d in expert_dirs.items():
        try:
            if kind == "fisher":
                per_task[t] = fisher_embedding(d, backbone, n_samples, seed)
            elif kind == "weights":
                per_task[t] = weight_embedding(d)
            else:
                per_task[t] = data_embedding(metas[t]["task"], backbone, n_samples, seed)
        except EmbeddingError as e:
            failed[t] = str(e)
        if on_task:
            on_task(t)
    if failed:
        raise EmbeddingError("cannot embed " + "; ".join(failed.values()), list(failed))
    meta = {"kind": kind, "method": methods.pop(), "backbone_id": backbones.pop(), "n_samples": n_samples,
            "seed": seed}
    return stack(per_task, meta)


def save_embeddings(path: str | Path, emb: TaskEmbeddings) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {n: torch.from_numpy(emb.flat()[i].astype(np.float32)).contiguous() for i, n in enumerate(emb.names)}
    metadata = {"format": "pitune-embeddings/1", "groups": json.dumps([[g, int(v.shape[1])] for g, v in emb.groups.items()]),
                "names": json.dumps(emb.names), "meta": json.dumps(emb.meta)}
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)
    return path


def load_embeddings(path: str | Path) -> TaskEmbeddings:
    try:
        with safe_open(str(path), framework="np") as f:
            md = f.metadata() or {}
            names = json.loads(md["names"])
            groups = json.loads(md["groups"])
            flat = np.stack([f.get_tensor(n) for n in names]).astype(np.float64)
            meta = json.loads(md.get("meta", "{}"))
    except Exception as e:
        raise EmbeddingError(f"{path} is not a readable pitune embeddings file ({e})") from e
    out, start = {}, 0
    for g, size in groups:
        out[g] = flat[:, start:start + size]
        start += size
    if start != flat.shape[1]:
        raise EmbeddingError(f"{path}: group sizes do not add up to the stored vectors")
    return TaskEmbeddings(names, out, meta)
