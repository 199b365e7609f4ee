"""Alignment pre-training of the projector (the only part of the backbone pitune trains).

Both encoders stay frozen; the projector learns to place EfficientNet feature cells where the
MiniLM trunk reads them like words. Objective: contrastive (InfoNCE) between the pooled embedding
of an image's visual tokens and the trunk's embedding of its text, against the other texts of the
batch. Pairs come only from the *training* splits of image tasks (class verbalisations for vision
tasks, true captions for vision-language tasks), never from validation or test data.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pitune_core.model.backbone import Inputs, UnifiedBackbone, VisionConfig, save_projector, task_features
from pitune_core.model.device import default_device, seed_everything
from pitune_core.model.experts import evaluate, prepare_task
from pitune_core.common import progress
from pitune_core.data.tasks import TaskSpec, get_task, list_tasks


# Image tasks whose *training* splits the projector is aligned on. The digit, face and texture tasks
# are held out entirely, so their zero-shot scores measure real zero-shot transfer of the alignment.
ALIGN_TASKS = ("fashion_mnist", "emoji_group", "tux_category", "tux_caption_match", "tux_category_question",
               "emoji_name_match", "flag_country_match")


@dataclass
class AlignConfig:
    pairs_per_task: int = 400
    epochs: int = 6
    batch_size: int = 64
    lr: float = 2e-3
    seed: int = 0
    temperature: float = 0.05


def alignment_pairs(tasks: list[TaskSpec], cfg: AlignConfig, vision: VisionConfig):
    """(visual features, texts) from the training splits of image tasks."""
    rng = np.random.default_rng(cfg.seed)
    feats, texts = [], []
    for spec in tasks:
        data = spec.load()
        f = task_features(data, config=vision)
        if f is None:
            continue
        tr = data.train
        if spec.modality == "vision":
            idx = np.arange(len(tr))
            txt = [spec.verbalizers[y] for y in tr.labels]
        else:  # vision-language: only true pairs (label "yes") carry a caption of the image
            idx = np.flatnonzero(tr.labels == 1)
            txt = list(tr.texts)
        idx = rng.permutation(idx)[: cfg.pairs_per_task]
        feats.append(f["train"][torch.as_tensor(idx)])
        texts.extend(txt[i] for i in idx)
    if not feats:
        raise ValueError("no image tasks given: alignment needs vision or vision-language tasks")
    return torch.cat(feats), texts


def train_projector(tasks: list[str] | None = None, out: str | Path | None = None, cfg: AlignConfig = AlignConfig(),
                    device: torch.device | None = None, on_step=None) -> dict:
    """Train and save the projector; returns its metrics (zero-shot val accuracy per image task)."""
    specs = [get_task(t) for t in (tasks or ALIGN_TASKS)]
    held_out = [t for t in list_tasks() if t.modality != "language" and t.name not in {s.name for s in specs}]
    device = device or default_device()
    seed_everything(cfg.seed)
    bb = UnifiedBackbone(device=device)  # fresh projector
    vis, texts = alignment_pairs(specs, cfg, bb.vision)
    uniq = sorted(set(texts))
    tindex = {t: i for i, t in enumerate(uniq)}
    target = torch.tensor([tindex[t] for t in texts])
    with torch.no_grad():
        text_emb = torch.cat([bb.encode_texts(uniq[i:i + 128]) for i in range(0, len(uniq), 128)])
    params = list(bb.projector.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    g = torch.Generator().manual_seed(cfg.seed)
    steps_per_epoch = max(1, len(texts) // cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=0.1)
    t0, losses = time.time(), []
    bar = progress(range(total), desc="align projector")
    order = torch.randperm(len(texts), generator=g)
    for step in bar:
        if step % steps_per_epoch == 0:
            order = torch.randperm(len(texts), generator=g)
        idx = order[(step % steps_per_epoch) * cfg.batch_size:][: cfg.batch_size]
        img = bb.encode(Inputs(None, vis[idx], len(idx)))
        # contrast against the distinct texts of this batch (several images may share a label)
        batch_t = torch.unique(target[idx])
        logits = img @ text_emb[batch_t].to(device).T / cfg.temperature
        y = torch.searchsorted(batch_t, target[idx]).to(device)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if on_step:
            on_step({"stage": "align", "step": step + 1, "total": total, "loss": losses[-1]})
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    bb.projector.eval()
    metrics = {"pairs": len(texts), "distinct_texts": len(uniq), "steps": total, "final_loss": float(np.mean(losses[-20:])),
               "train_time_s": round(time.time() - t0, 1), "zero_shot_val": {}}
    for spec in specs + held_out:  # zero-shot on validation splits: how usable the visual tokens are
        _, tensors = prepare_task(spec, bb)
        metrics["zero_shot_val"][spec.name] = evaluate(bb, None, tensors["val"], spec)[spec.metric]
    meta = {"format": "pitune-projector/1", "trunk": "all-MiniLM-L6-v2", "vision": bb.vision.id,
            "image_size": bb.vision.image_size, "grid": bb.vision.grid, "hidden": bb.trunk.config.hidden_size,
            "tasks": [s.name for s in specs], "held_out": [s.name for s in held_out], "config": asdict(cfg), "metrics": metrics,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if out is not None:
        save_projector(bb.projector, Path(out), meta)
    return meta
