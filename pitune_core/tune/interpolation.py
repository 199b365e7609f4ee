"""Interpolate-and-tune: combine k experts in parameter space with learnable softmax weights.

For LoRA the combined update is ``Σ_i w_i B_i A_i``. Rather than running k adapters (the official
code runs every expert's forward), the k experts are concatenated into ONE LoRA of rank k·r whose
B blocks are scaled by the weights: ``[w_1 B_1 … w_k B_k] · [A_1; …; A_k] = Σ_i w_i B_i A_i``
exactly, so a step costs about one (slightly wider) adapter. Prompt tuning and IA3 combine by the
weighted sum of their prompts / scaling vectors, the same size as one expert.

The mixing weights follow the paper's official code: one softmax over the k experts *per adapter
position* (each adapted module of each layer: layer 3's query LoRA, layer 3's value LoRA, ...; each
IA3 vector; the prompt), all initialised alike (uniform by default). ``granularity="global"`` keeps
one weight vector for the whole model (an ablation). Per-position weights cost nothing extra: each
position's B blocks are scaled by its own row of weights.

The combined model is an ordinary peft adapter: :meth:`InterpolatedExperts.save_merged` writes it
in peft's format (LoRA of rank k·r with the weights baked in) plus the sources and final weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.func import functional_call

from pitune_core.common import PROJECTOR_MODULE
from pitune_core.model.backbone import UnifiedBackbone
from pitune_core.model.experts import EXPERT_FORMAT, _versions, load_expert, read_expert_meta, save_expert
# the one weight parser (torch-free, shared with the CLI, the reader and the dashboard)
from pitune_core.tune.weights import InterpolationError, initial_logits, parse_weights  # noqa: F401


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


GRANULARITIES = ("position", "global")
_POSITION_TAGS = (".lora_A.", ".lora_B.", ".lora_embedding_A.", ".lora_embedding_B.", ".ia3_l.", ".embedding.")


def adapter_position(param_name: str) -> str:
    """The adapter position a parameter belongs to: its module path without the adapter tensor's
    own suffix (a LoRA's A and B share one position; each IA3 vector and the prompt are one)."""
    for tag in _POSITION_TAGS:
        if tag in param_name:
            return param_name[: param_name.index(tag)]
    return param_name


class InterpolatedExperts(nn.Module):
    """k source experts + mixing logits, producing one adapter's parameters on demand."""

    def __init__(self, backbone: UnifiedBackbone, expert_dirs: Sequence[str | Path],
                 weights: str | Sequence[float] = "uniform", similarities: Sequence[float] | None = None,
                 train_weights: bool = True, train_experts: bool = True, granularity: str = "position",
                 labels: Sequence[str] | None = None):
        super().__init__()
        if granularity not in GRANULARITIES:
            raise InterpolationError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")
        self.granularity = granularity
        from peft import get_peft_model

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
        # adapter positions: the module (or IA3 vector / prompt) a parameter belongs to
        self.positions = sorted({adapter_position(n) for n in self.param_names}) if granularity == "position" else ["*"]
        self._pos_of = [self.positions.index(adapter_position(n)) if granularity == "position" else 0
                        for n in self.param_names]
        self.labels = list(labels) if labels is not None else [m["task"] for m in self.metas]
        init = torch.tensor(initial_logits(weights, similarities, self.k), dtype=torch.float32)
        init = init.unsqueeze(0).repeat(len(self.positions), 1)  # (positions, k), every row alike
        self.logits = nn.Parameter(init.to(backbone.device), requires_grad=train_weights)

    # -- the combination ------------------------------------------------------------------------
    def position_weights(self) -> torch.Tensor:
        """Mixing weights per adapter position, (positions, k); each row sums to 1."""
        return torch.softmax(self.logits, dim=-1)

    def weights(self) -> torch.Tensor:
        """The mixing weights averaged over positions, (k,) (exact for ``granularity="global"``)."""
        return self.position_weights().mean(0)

    def combined_state(self, only: str | None = None) -> dict[str, torch.Tensor]:
        """The combined adapter's parameters by their names in the peft model (``only``: those whose
        name starts with it)."""
        W = self.position_weights()
        out = {}
        for name, stacked, pos in zip(self.param_names, self.sources, self._pos_of):
            if only is not None and not name.startswith(only):
                continue
            w = W[pos]
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
                                  "labels": self.labels, "granularity": self.granularity,
                                  "weights": self.weights().detach().cpu().tolist(),
                                  "position_weights": dict(zip(self.positions,
                                                               self.position_weights().detach().cpu().tolist()))},
                **meta}
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

    def project(self, feats: torch.Tensor) -> torch.Tensor:
        """The image projector with the combined parameters (the backbone calls it before the trunk:
        :meth:`pitune_core.model.backbone.UnifiedBackbone.projector_of`)."""
        prefix = f"base_model.model.{PROJECTOR_MODULE}."
        state = {n[len(prefix):]: t for n, t in self.interp.combined_state(only=prefix).items()}
        return functional_call(getattr(self.get_base_model(), PROJECTOR_MODULE), state, args=(feats,), strict=False)
