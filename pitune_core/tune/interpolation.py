"""Interpolate-and-tune: combine k experts in parameter space with learnable softmax weights.

For LoRA the combined update is ``Σ_i w_i B_i A_i``. Rather than running k adapters (the official
code runs every expert's forward), the k experts are concatenated into ONE LoRA of rank k·r whose
B blocks are scaled by the weights: ``[w_1 B_1 … w_k B_k] · [A_1; …; A_k] = Σ_i w_i B_i A_i``
exactly, so a step costs about one (slightly wider) adapter. Prompt tuning and IA3 combine by the
weighted sum of their prompts / scaling vectors, the same size as one expert.

The combined model is an ordinary peft adapter: :meth:`InterpolatedExperts.save_merged` writes it
in peft's format (LoRA of rank k·r with the weights baked in) plus the sources and final weights.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from pitune_core.model.backbone import UnifiedBackbone
from pitune_core.model.experts import EXPERT_FORMAT, _versions, read_expert_meta, save_expert


class InterpolationError(ValueError):
    """Bad sources, weights or k for an interpolation."""


def parse_weights(spec: str | Sequence[float] | None, k: int) -> str | list[float]:
    """``uniform`` / ``auto`` / explicit numbers (``"0.5,0.3,0.2"``), validated against ``k``."""
    if spec is None:
        return "uniform"
    if isinstance(spec, str) and spec in ("uniform", "auto"):
        return spec
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    try:
        values = [float(p) for p in parts]
    except (TypeError, ValueError):
        raise InterpolationError(f"weights must be 'uniform', 'auto' or {k} comma-separated numbers, got {spec!r}") from None
    if len(values) != k:
        raise InterpolationError(f"got {len(values)} weights for {k} sources; give exactly one weight per source")
    if not all(math.isfinite(v) for v in values):
        raise InterpolationError(f"weights must be finite numbers, got {values}")
    if any(v < 0 for v in values):
        raise InterpolationError(f"weights must be non-negative, got {values}")
    if sum(values) <= 0:
        raise InterpolationError("weights must not all be zero")
    return values


def check_sources(expert_dirs: Sequence[str | Path], backbone_id: str | None = None) -> list[dict]:
    """Validate that experts exist, share one method and configuration, and one backbone."""
    if len(expert_dirs) == 0:
        raise InterpolationError("k must be at least 1: no source experts given")
    metas = [read_expert_meta(d) for d in expert_dirs]
    methods = {m["method"] for m in metas}
    if len(methods) > 1:
        raise InterpolationError(f"sources use different expert methods ({', '.join(sorted(methods))}); "
                                 f"interpolate experts of one method")
    cfgs = {json.dumps(m["method_config"], sort_keys=True) for m in metas}
    if len(cfgs) > 1:
        raise InterpolationError("sources have different adapter configurations (e.g. LoRA rank); they cannot be combined")
    bbs = {m["backbone_id"] for m in metas}
    if len(bbs) > 1 or (backbone_id is not None and bbs != {backbone_id}):
        raise InterpolationError(f"sources were trained on backbone(s) {sorted(bbs)}, not the loaded {backbone_id}")
    return metas


class InterpolatedExperts(nn.Module):
    """k source experts + mixing logits, producing one adapter's parameters on demand."""

    def __init__(self, backbone: UnifiedBackbone, expert_dirs: Sequence[str | Path],
                 weights: str | Sequence[float] = "uniform", similarities: Sequence[float] | None = None,
                 train_weights: bool = True, train_experts: bool = True):
        super().__init__()
        from peft import get_peft_model

        from pitune_core.model.experts import load_expert

        self.backbone = backbone
        self.expert_dirs = [str(d) for d in expert_dirs]
        self.metas = check_sources(expert_dirs, backbone.backbone_id)
        self.k = len(expert_dirs)
        self.method = self.metas[0]["method"]
        weights = parse_weights(weights, self.k)
        # source tensors, stacked (k, ...) per adapter parameter
        per_expert: list[dict[str, torch.Tensor]] = []
        template_cfg = None
        for d in self.expert_dirs:
            m, _ = load_expert(d, backbone, trainable=True)
            template_cfg = m.peft_config["default"]
            per_expert.append({n: p.detach().clone() for n, p in m.named_parameters() if p.requires_grad})
            del m
        self.param_names = sorted(per_expert[0])
        self.sources = nn.ParameterList(
            [nn.Parameter(torch.stack([e[n] for e in per_expert]), requires_grad=train_experts) for n in self.param_names])
        # one peft model of the combined shape: LoRA rank k·r (alpha scaled to keep alpha/r), others as is
        import copy

        cfg = copy.deepcopy(template_cfg)
        cfg.inference_mode = False
        if self.method == "lora":
            cfg.r = template_cfg.r * self.k
            cfg.lora_alpha = template_cfg.lora_alpha * self.k
        self.model = get_peft_model(backbone.fresh_trunk(), cfg).to(backbone.device)
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.to(backbone.device)
        # mixing logits
        if weights == "uniform":
            init = torch.zeros(self.k)
        elif weights == "auto":
            if similarities is None or len(similarities) != self.k:
                raise InterpolationError("weights='auto' needs one predicted similarity per source")
            s = np.clip(np.asarray(similarities, dtype=np.float64), 1e-6, None)
            init = torch.tensor(np.log(s / s.sum()), dtype=torch.float32)
        else:
            w = np.asarray(weights, dtype=np.float64)
            init = torch.tensor(np.log(np.clip(w / w.sum(), 1e-12, None)), dtype=torch.float32)
        self.logits = nn.Parameter(init.to(backbone.device), requires_grad=train_weights)

    # -- the combination ------------------------------------------------------------------------
    def weights(self) -> torch.Tensor:
        return torch.softmax(self.logits, dim=0)

    def combined_state(self) -> dict[str, torch.Tensor]:
        w = self.weights()
        out = {}
        for name, stacked in zip(self.param_names, self.sources):
            if self.method == "lora" and ".lora_A." in name:  # (k, r, in) → (k·r, in)
                out[name] = stacked.reshape(-1, stacked.shape[-1])
            elif self.method == "lora" and ".lora_B." in name:  # (k, out, r) → (out, k·r), block i scaled by w_i
                scaled = stacked * w.view(-1, 1, 1)
                out[name] = scaled.permute(1, 0, 2).reshape(stacked.shape[1], -1)
            else:  # prompt embeddings, IA3 vectors: weighted sum
                out[name] = torch.einsum("k,k...->...", w, stacked)
        return out

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in [self.logits, *self.sources] if p.requires_grad]

    def trunk(self) -> "InterpolatedTrunk":
        return InterpolatedTrunk(self)

    # -- export ---------------------------------------------------------------------------------
    @torch.no_grad()
    def bake(self) -> nn.Module:
        """Write the current combination into the peft model's own parameters and return it."""
        state = self.combined_state()
        params = dict(self.model.named_parameters())
        for n, t in state.items():
            params[n].copy_(t)
        return self.model

    def save_merged(self, out: str | Path, meta: dict) -> Path:
        model = self.bake()
        full = {"format": EXPERT_FORMAT, "method": self.method, "backbone_id": self.backbone.backbone_id,
                "method_config": self.metas[0]["method_config"], "versions": _versions(),
                "interpolation": {"sources": [m["task"] for m in self.metas], "source_dirs": self.expert_dirs,
                                  "weights": self.weights().detach().cpu().tolist()}, **meta}
        if self.method == "lora":
            full["method_config"] = dict(full["method_config"], r=self.metas[0]["method_config"]["r"] * self.k,
                                         alpha=self.metas[0]["method_config"]["alpha"] * self.k)
        return save_expert(model, out, full)


class InterpolatedTrunk(nn.Module):
    """Looks like a trunk to the backbone; runs the peft model with the combined parameters."""

    def __init__(self, interp: InterpolatedExperts):
        super().__init__()
        self.interp = interp

    def get_base_model(self):
        return self.interp.model.get_base_model()

    def forward(self, **kwargs):
        return functional_call(self.interp.model, self.interp.combined_state(), args=(), kwargs=kwargs, strict=False)
