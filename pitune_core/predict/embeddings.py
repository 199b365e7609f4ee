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

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open

from pitune_core.common import PROJECTOR_MODULE
from pitune_core.model.backbone import Inputs, TaskTensors, UnifiedBackbone
from pitune_core.model.device import seed_everything
from pitune_core.model.experts import ExpertError, load_expert, prepare_task, read_expert_meta
from pitune_core.data.tasks import get_task
from pitune_core.predict import embedding_file
from pitune_core.spec.vocab import EMBEDDINGS

KINDS = EMBEDDINGS  # the embeddings a study computes: the spec's list


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


def fisher_chunks(lengths: np.ndarray, label_tokens: int, chunk_size: int = 64, chunk_tokens: int = 512,
                  chunk_label_tokens: int = 4096) -> list[np.ndarray]:
    """The chunks of :func:`per_sample_grads`: example indices in order of length, each chunk at most
    ``chunk_size`` examples, ``chunk_tokens`` padded input tokens and ``chunk_label_tokens`` label tokens
    (every example back-propagates all ``label_tokens`` padded label tokens of the task)."""
    n = len(lengths)
    per_chunk = max(1, min(chunk_size, chunk_label_tokens // max(1, int(label_tokens))))
    order = np.argsort(lengths, kind="stable")
    chunks, start = [], 0
    while start < n:  # greedy: grow a chunk while its padded size stays within budget
        stop = start + 1
        while (stop < n and stop - start < per_chunk
               and (stop + 1 - start) * lengths[order[stop]] <= chunk_tokens):
            stop += 1
        chunks.append(order[start:stop])
        start = stop
    return chunks


def per_sample_grads(model: torch.nn.Module, backbone: UnifiedBackbone, data: TaskTensors, verbalizers: list[str],
                     chunk_size: int = 64, chunk_tokens: int = 512,
                     chunk_label_tokens: int = 4096) -> dict[str, torch.Tensor]:
    """Gradient of every example's own loss w.r.t. the model's adapter parameters, batched.

    Returns ``{short name (as adapter_parameters): tensor (len(data), *parameter shape)}`` in the
    data's order. The loss is the one training minimises (label-as-text cross-entropy, label texts
    encoded by the adapted trunk, so they carry gradient too). Computed with ``torch.func``:
    ``vmap`` over ``grad`` of a one-example loss, on chunks of examples of similar length (at most
    ``chunk_size`` examples and ``chunk_tokens`` padded tokens each, padded to the chunk's longest
    sequence: short image inputs go in large chunks, long texts in small ones); the label texts are encoded once per
    chunk and back-propagated per example, so a chunk also holds at most ``chunk_label_tokens`` padded label
    tokens (examples x classes x label length, :func:`fisher_chunks`): memory stays bounded whatever the
    class count (a 100-class task grew a placement to 5 GB with chunks sized by the examples alone). Equal to the one-example-at-a-time loop
    (:func:`fisher_information` with ``batched=False``) up to float rounding (``tests/test_speed.py``);
    ``bench/bench_fisher.py`` measures the speed-up. Works for LoRA, IA3 and prompt-tuning experts.
    """
    from torch.func import functional_call, grad, vmap

    short = {n.replace("base_model.model.", "").replace(".default", ""): n
             for n, p in model.named_parameters() if p.requires_grad}
    if not short:
        raise EmbeddingError("the expert has no trainable adapter parameters")
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    prompt_key = next((n for n in params if "prompt_encoder" in n), None)  # prompt tuning: the prompt is the input
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    dtype = next(iter(params.values())).dtype

    def additive(mask: torch.Tensor) -> torch.Tensor:  # (B, L) bool -> (B, 1, 1, L) additive mask
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            ~mask, torch.finfo(dtype).min)[:, None, None, :]

    def encode(p, emb, mask):  # the backbone's encode on prepared embeddings, with parameters ``p``
        if prompt_key is not None:
            prompts = p[prompt_key].to(emb.dtype).unsqueeze(0).expand(emb.shape[0], -1, -1)
            emb = torch.cat([prompts, emb], dim=1)
            mask = torch.cat([torch.ones(mask.shape[0], prompts.shape[1], dtype=torch.bool, device=mask.device),
                              mask], dim=1)
            out = base(inputs_embeds=emb, attention_mask=additive(mask)).last_hidden_state
        else:
            out = functional_call(model, p, args=(), kwargs={"inputs_embeds": emb, "attention_mask": additive(mask)},
                                  strict=False).last_hidden_state
        m = mask.unsqueeze(-1).to(out.dtype)
        return F.normalize((out * m).sum(1) / m.sum(1).clamp_min(1e-9), dim=-1)

    with torch.no_grad():
        lab_emb, lab_mask = backbone._embed(Inputs(list(verbalizers), None, len(verbalizers)), model)
    # an expert may adapt the image projector (its LoRA sits in ``params``): images are projected inside
    # the per-example loss, so those parameters get their gradient as in the one-example loop
    proj_prefix = f"base_model.model.{PROJECTOR_MODULE}."
    proj_params = {n: n[len(proj_prefix):] for n in params if n.startswith(proj_prefix)}
    projector = backbone.projector_of(model)

    def project(p, vis):  # (T, 1280) -> (T, hidden)
        if proj_params:
            return functional_call(projector, {short_n: p[n] for n, short_n in proj_params.items()}, args=(vis,),
                                   strict=False)
        return projector(vis)

    def one_loss(p, emb, mask, y, vis=None):
        labels = encode(p, lab_emb, lab_mask.bool())
        if vis is not None:  # [CLS] visual tokens, then the rest, as the backbone's _embed places them
            v = project(p, vis).to(emb.dtype)
            emb = torch.cat([emb[:1], v, emb[1:]], dim=0)
            mask = torch.cat([mask[:1], torch.ones(v.shape[0], dtype=torch.bool, device=mask.device), mask[1:]])
        x = encode(p, emb.unsqueeze(0), mask.unsqueeze(0))
        return F.cross_entropy(backbone.logit_scale * x @ labels.T, y.unsqueeze(0))

    per_example = vmap(grad(one_loss), in_dims=(None, 0, 0, 0))
    per_example_visual = vmap(grad(one_loss), in_dims=(None, 0, 0, 0, 0))
    n = len(data)
    lengths = np.array([len(t) for t in backbone.token_ids(data.texts)] if data.texts is not None else [2] * n)
    chunks = fisher_chunks(lengths, int(lab_mask.shape[0] * lab_mask.shape[1]), chunk_size, chunk_tokens,
                           chunk_label_tokens)
    out = {k: torch.empty((n, *params[full].shape), dtype=dtype, device=backbone.device) for k, full in short.items()}
    cfg = base.config
    saved = cfg._attn_implementation
    cfg._attn_implementation = "eager"  # matmul + softmax attention: has vmap batching rules (fused SDPA has none)
    try:
        for idx in chunks:
            inputs, y = data.batch(idx)
            with torch.no_grad():
                emb, mask = backbone._embed(Inputs(inputs.texts, None, inputs.size), model)
            if inputs.visual is None:
                grads = per_example(params, emb, mask.bool(), y.to(backbone.device))
            else:
                grads = per_example_visual(params, emb, mask.bool(), y.to(backbone.device),
                                           inputs.visual.to(backbone.device))
            rows = torch.as_tensor(idx, device=backbone.device)
            for k, full in short.items():
                out[k][rows] = grads[full]
    finally:
        cfg._attn_implementation = saved
    return out


def fisher_information(model: torch.nn.Module, backbone: UnifiedBackbone, data: TaskTensors, verbalizers: list[str],
                       batched: bool = True, chunk_size: int = 64) -> dict[str, np.ndarray]:
    """Diagonal empirical Fisher: the mean over ``data`` of each example's squared loss gradient,
    per adapter tensor (flattened, float64). ``batched=False`` is the reference: one backward pass
    per example in a Python loop (how it was computed before :func:`per_sample_grads`)."""
    params = adapter_parameters(model)
    acc = {k: torch.zeros_like(p, dtype=torch.float64) for k, p in params.items()}
    if batched:
        for i in range(0, len(data), 4 * chunk_size):  # bounded memory for the per-example gradients
            grads = per_sample_grads(model, backbone, data.subset(range(i, min(i + 4 * chunk_size, len(data)))),
                                     verbalizers, chunk_size)
            for k, gr in grads.items():
                acc[k] += (gr.double() ** 2).sum(0)
    else:
        for i in range(len(data)):
            inputs, y = data.batch([i])
            label_emb = backbone.encode_texts(verbalizers, model)
            loss = F.cross_entropy(backbone.logits(inputs, label_emb, model), y.to(backbone.device))
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            for k, gr in zip(params, grads):
                if gr is not None:
                    acc[k] += gr.detach().double() ** 2
    return {k: (v / max(1, len(data))).flatten().cpu().numpy() for k, v in acc.items()}


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
    out = fisher_information(model, backbone, t.subset(idx), list(spec.verbalizers))
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
    metas, unreadable = {}, {}
    for t, d in expert_dirs.items():  # every broken expert is reported, each by its task
        try:
            metas[t] = read_expert_meta(d)
        except ExpertError as e:
            unreadable[t] = f"{t}: {e}"
    if unreadable:
        raise EmbeddingError("cannot embed " + "; ".join(unreadable.values()), list(unreadable))
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
    """Write ``emb`` as a ``pitune-embeddings/1`` file (:mod:`pitune_core.predict.embedding_file`)."""
    return embedding_file.write(path, emb.names, emb.flat(), [(g, int(v.shape[1])) for g, v in emb.groups.items()],
                                emb.meta)


def load_embeddings(path: str | Path) -> TaskEmbeddings:
    """Read a ``pitune-embeddings/1`` file back (float64 groups); :class:`EmbeddingError` if it cannot be."""
    try:
        names, flat, groups, meta = embedding_file.read(path)
    except embedding_file.EmbeddingFileError as e:
        raise EmbeddingError(str(e)) from e
    out, start = {}, 0
    for g, size in groups:
        out[g] = flat[:, start:start + size]
        start += size
    return TaskEmbeddings(names, out, meta)
