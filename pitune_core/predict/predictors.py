"""Transfer predictors side by side: each one function from the target data a user has to a row.

Why: π-Tuning's claim is that the Fisher embedding predicts which experts transfer. Whether it
does is only meaningful next to the alternatives (the trivial same-modality rule, random, the data
alone, the expert's own score on the target, LogME), and only at the data a user has: a few-shot
target has 4 or 16 examples per class, not the full training split its shipped expert saw.

Every predictor has the same signature ``fn(target: TargetData, ctx: PredictorContext) ->
np.ndarray``: one score per candidate source (``ctx.sources_for(target.task)`` order; higher =
expected to transfer better). :func:`predict_row` is the one entry point; :data:`PREDICTORS` lists
them by name, each with a docstring that says exactly what it computes.

The target side sees only ``target.tensors`` (built by :func:`available_examples` from the k-shot
sample, or from the full training split when ``shots is None``). Where a predictor needs a
*target expert* (the Fisher variants trained at the target, weights), it trains one on those
examples with the context's few-shot budget (the same procedure and seed as the from-scratch
expert of the transfer study); at full data it uses the study's full-data expert, as today. The
source side (full-data experts on their own training data) is computed once per source and
cached (in memory, and on disk under ``ctx.cache_dir``), so it is not part of a target's cost.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pitune_core.common import write_atomic
from pitune_core.data.tasks import TaskData, get_task
from pitune_core.model.backbone import (
    TaskTensors,
    UnifiedBackbone,
    task_features,
    task_tensors,
)
from pitune_core.model.device import seed_everything
from pitune_core.model.experts import (
    TrainConfig,
    attach,
    get_method,
    load_expert,
    read_expert_meta,
    train_loop,
)
from pitune_core.predict.embeddings import (
    EmbeddingError,
    adapter_parameters,
    data_embedding,
    weight_embedding,
)
from pitune_core.spec.vocab import PREDICTOR_NAMES, QUALITY_K
from pitune_core.model.experts import prepare_task
from pitune_core.paths import StudyPaths
from pitune_core.predict.similarity import fisher_similarity, top_k
from pitune_core.predict.learned import same_family_row

#: neighbours of :func:`knn_accuracy` (1-NN: the few-shot case has 3 same-class others at 4 shots)
KNN_K = 1

# ----------------------------------------------------------------------------- the target's data

@dataclass
class TargetData:
    """The examples of a target that a predictor may use: ``shots`` per class drawn with ``seed``
    (the transfer study's few-shot sample for that seed), or the full training split (``shots=None``)."""

    task: str
    shots: int | None
    seed: int
    tensors: TaskTensors = field(repr=False)
    indices: np.ndarray = field(repr=False)

    @property
    def key(self) -> tuple:
        return (self.task, self.shots, self.seed)


def available_examples(task: str, backbone: UnifiedBackbone, shots: int | None, seed: int = 0,
                       data: TaskData | None = None) -> TargetData:
    """The target data a user has. ``data`` (default: the task's own) is only read at the
    sampled rows: the k-shot path never looks at any other training example."""
    spec = get_task(task)
    data = data if data is not None else spec.load()
    idx = np.arange(len(data.train)) if shots is None else data.few_shot(shots, seed=seed)
    sub = data.train.subset(idx)
    feats = None
    if sub.images is not None:
        feats = task_features(data, config=backbone.vision)
        t = task_tensors(data, "train", feats, backbone.vision).subset(idx)
    else:
        t = TaskTensors(sub.texts, None, torch.as_tensor(sub.labels, dtype=torch.long))
    return TargetData(task, shots, seed, t, idx)


# ----------------------------------------------------------------------------- context and caches

@dataclass
class PredictorContext:
    """What every predictor may use besides the target's data: the backbone, the pool of
    full-data experts (``experts[task]``: its directory; the sources of a target are all the
    others), the few-shot budget used to train a target expert, Fisher settings, and caches."""

    backbone: UnifiedBackbone
    experts: dict[str, Path]
    method: str = "lora"
    steps: int = 25
    batch_size: int = 16
    fisher_n: int = 64
    fisher_batch: int = 8
    data_n: int = 256
    seed: int = 0
    probe_seed: int = 0
    probe_std: float = 0.02
    cache_dir: Path | None = None
    #: a study's shipped source-side rows (read-only; :meth:`pitune_core.paths.StudyPaths.source_side`),
    #: looked up before ``cache_dir``
    shipped: Path | None = None
    #: hears each source-side row computed here (one the study does not ship): ``{"stage", "step", "total"}``
    on_progress: Callable[[dict], None] | None = field(default=None, repr=False)
    #: write every row handed out (found in memory or ``shipped`` too) into ``cache_dir``
    keep: bool = False
    _computed: int = field(default=0, repr=False)
    _mem: dict = field(default_factory=dict, repr=False)
    _target_model: tuple = field(default=(None, None), repr=False)
    _probe: object = field(default=None, repr=False)
    _method: object = field(default=None, repr=False)

    def adapter(self):
        """The adapter a target or probe expert gets: the pool's own configuration (its experts'
        ``method_config``), so that every row compares the same parameters as the pool's Fisher."""
        if self._method is None:
            mc = {}
            for d in self.experts.values():
                mc = {k: tuple(v) if isinstance(v, list) else v
                      for k, v in read_expert_meta(d)["method_config"].items() if k not in ("name", "lr")}
                break
            self._method = get_method(self.method, **mc)
        return self._method

    def sources_for(self, task: str) -> list[str]:
        return [t for t in self.experts if t != task]

    def train_config(self, seed: int) -> TrainConfig:
        return TrainConfig(min_steps=self.steps, max_steps=self.steps, batch_size=self.batch_size, seed=seed)

    # -- source-side cache: memory, then disk (npz, no pickle), keyed by the expert's bytes --
    def cached(self, kind: str, source: str, params: dict, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        h = hashlib.sha256((Path(self.experts[source]) / "adapter_model.safetensors").read_bytes()).hexdigest()[:16]
        blob = json.dumps({"kind": kind, "source": source, "expert": h, "backbone": self.backbone.backbone_id,
                           **params}, sort_keys=True)
        key = hashlib.sha256(blob.encode()).hexdigest()[:24]
        name = f"{kind}-{source}-{key}.npz"
        path = self.cache_dir / name if self.cache_dir else None
        if key in self._mem:
            return self._keep(path, self._mem[key])
        if self.shipped is not None and (self.shipped / name).is_file():
            try:  # the study's copy (its manifest checks it); never written to
                with np.load(self.shipped / name, allow_pickle=False) as z:
                    out = {k: z[k] for k in z.files}
                self._mem[key] = out
                return self._keep(path, out)
            except (OSError, ValueError):
                pass  # unreadable: compute it here instead
        if path is not None and path.exists():
            try:
                with np.load(path, allow_pickle=False) as z:
                    out = {k: z[k] for k in z.files}
                self._mem[key] = out
                return out
            except (OSError, ValueError):
                path.unlink(missing_ok=True)  # a torn write: recompute
        self._computed += 1
        if self.on_progress is not None:
            self.on_progress({"stage": f"{SOURCE_STAGE} ({kind})", "step": self._computed - 1,
                              "total": max(self._computed, len(self.experts) - 1)})
        out = compute()
        if self.on_progress is not None:
            self.on_progress({"stage": f"{SOURCE_STAGE} ({kind})", "step": self._computed,
                              "total": max(self._computed, len(self.experts) - 1)})
        self._mem[key] = out
        return self._keep(path, out, always=True)

    def _keep(self, path: Path | None, out: dict, always: bool = False) -> dict:
        """Write ``out`` to ``path`` (the disk cache) when it was computed here (``always``), or when
        this context ``keep``s every row it hands out (a study's shipped folder being filled)."""
        if path is not None and (always or self.keep) and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()  # shards compute the same source rows at once: write under a private name
            np.savez(buf, **out)
            write_atomic(path, buf.getvalue())
        return out

    def settings(self) -> dict:
        """What a source-side row depends on besides its expert and the backbone (the keys of
        :meth:`cached`); written beside shipped rows so that a run builds its context alike."""
        return {"method": self.method, "steps": self.steps, "batch_size": self.batch_size, "fisher_n": self.fisher_n,
                "fisher_batch": self.fisher_batch, "data_n": self.data_n, "seed": self.seed,
                "probe_seed": self.probe_seed, "probe_std": self.probe_std}

    def clear(self) -> None:
        """Forget every cached result (memory only), e.g. to time a predictor from cold."""
        self._mem.clear()
        self._target_model = (None, None)
        self._probe = None


#: the named stage of source-side rows computed on this machine (a study ships them; an older one does not)
SOURCE_STAGE = "source-side rows not shipped with the study: computed once, then cached"
SETTINGS_FILE = "context.json"
_SETTING_TYPES = {"method": str, "steps": int, "batch_size": int, "fisher_n": int, "fisher_batch": int, "data_n": int,
                  "seed": int, "probe_seed": int, "probe_std": float}


def write_shipped_settings(ctx: PredictorContext, folder: Path) -> Path:
    """Record ``ctx``'s settings beside the source-side rows it writes into a study (``folder``)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / SETTINGS_FILE, json.dumps(ctx.settings(), indent=1, sort_keys=True))
    return folder / SETTINGS_FILE


def study_context(study: str | Path, backbone: UnifiedBackbone, experts: dict[str, Path], method: str,
                  cache_dir: Path | None = None, on_progress: Callable[[dict], None] | None = None) -> PredictorContext:
    """The predictor context of a run or a placement on ``study``: the settings the study's ground
    truth made its predictor rows with (``predict/<method>/source-side/context.json``, so a run ranks
    as the study's graph was measured) and its shipped source-side rows, then ``cache_dir`` for any
    row it does not ship. A study without shipped rows gets the defaults and computes them (the
    stage :data:`SOURCE_STAGE`, reported to ``on_progress``)."""
    folder = StudyPaths(study).source_side(method)
    kw: dict = {}
    f = folder / SETTINGS_FILE
    if f.is_file() and not f.is_symlink() and f.stat().st_size < 65536:
        try:
            raw = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raw = {}
        if isinstance(raw, dict) and raw.get("method") == method:
            kw = {k: t(raw[k]) for k, t in _SETTING_TYPES.items() if k != "method" and isinstance(raw.get(k), (int, float))
                  and not isinstance(raw.get(k), bool)}
    return PredictorContext(backbone, experts, method=method, cache_dir=cache_dir,
                            shipped=folder if folder.is_dir() and not folder.is_symlink() else None,
                            on_progress=on_progress, **kw)


def source_tensors(task: str, backbone: UnifiedBackbone) -> TaskTensors:
    return prepare_task(get_task(task), backbone)[1]["train"]


# ----------------------------------------------------------------------------- Fisher, several ways

def _pick(n_total: int, n: int | None, seed: int) -> list[int]:
    g = seed_everything(seed)
    return torch.randperm(n_total, generator=g)[: n_total if n is None else min(n, n_total)].tolist()


def fisher_information(model: torch.nn.Module, backbone: UnifiedBackbone, tensors: TaskTensors, verbalizers: list[str],
                       mode: str = "empirical", n: int | None = None, seed: int = 0, batch_size: int = 8,
                       indices: list[int] | None = None) -> dict[str, np.ndarray]:
    """Diagonal Fisher of a model's adapter parameters on ``tensors`` (``n`` seeded samples; all if None).

    ``mode``: ``empirical`` (per-sample squared gradients of the loss at the true label, as
    :func:`pitune_core.predict.embeddings.fisher_embedding`), ``sampled`` (per-sample, the label
    drawn from the model's own predictive distribution: the "true" Fisher Task2Vec uses),
    ``batch`` (squared gradient of the mean loss of each minibatch of ``batch_size``, averaged over
    minibatches, as the official code computes it). ``indices`` gives the rows explicitly
    (then ``n`` is ignored)."""
    if mode not in ("empirical", "sampled", "batch"):
        raise ValueError(f"unknown Fisher mode {mode!r}; choose empirical, sampled or batch")
    if len(tensors) == 0:
        raise EmbeddingError("no examples to compute a Fisher embedding on")
    idx = list(indices) if indices is not None else _pick(len(tensors), n, seed)
    params = adapter_parameters(model)
    acc = {k: torch.zeros_like(p, dtype=torch.float64) for k, p in params.items()}
    gen = torch.Generator().manual_seed(seed + 1)
    groups = [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)] if mode == "batch" else [[i] for i in idx]
    for chunk in groups:
        inputs, y = tensors.batch(chunk)
        logits = backbone.logits(inputs, backbone.encode_texts(verbalizers, model), model)
        if mode == "sampled":
            y = torch.multinomial(F.softmax(logits.detach().double().cpu(), -1), 1, generator=gen).view(-1)
        loss = F.cross_entropy(logits, y.to(logits.device))
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        for k, gr in zip(params, grads):
            if gr is not None:
                acc[k] += gr.detach().double() ** 2
    out = {k: (v / len(groups)).flatten().cpu().numpy() for k, v in acc.items()}
    if not all(np.isfinite(v).all() for v in out.values()):
        raise EmbeddingError("Fisher information is NaN/inf (a diverged model)")
    return out


def pair_normalised_cosine(a: np.ndarray, b: np.ndarray, eps: float = 1e-12) -> float:
    """cos(a / (a + b + eps), b / (a + b + eps)) of two nonnegative vectors (Task2Vec's measure)."""
    s = a + b + eps
    x, y = a / s, b / s
    den = float(np.sqrt(np.dot(x, x) * np.dot(y, y)))
    return float(np.dot(x, y) / den) if den > 0 else 0.0


def fisher_row(target: dict[str, np.ndarray], sources: list[dict[str, np.ndarray]], per_group: bool = True,
               eps: float = 1e-12) -> np.ndarray:
    """Similarity of a target's Fisher to each source's: the mean over parameter groups of the
    per-group pair-normalised cosine (``per_group``, pitune's measure, = the pairwise
    :func:`~pitune_core.predict.similarity.fisher_similarity`), or one pair-normalised cosine of
    the whole concatenated vector (the official Task2Vec code, eps 1e-8 there)."""
    keys = list(target)
    for s in sources:
        if set(s) != set(keys):
            raise EmbeddingError("source and target Fisher embeddings have different parameter groups")
    if per_group:
        return np.array([np.mean([pair_normalised_cosine(target[g], s[g], eps) for g in keys]) for s in sources])
    t = np.concatenate([target[g] for g in keys])
    return np.array([pair_normalised_cosine(t, np.concatenate([s[g] for g in keys]), eps) for s in sources])


def target_expert(target: TargetData, ctx: PredictorContext) -> torch.nn.Module:
    """The target's expert at its data size: trained on ``target.tensors`` with the context's
    few-shot budget (same seed and procedure as the transfer study's from-scratch expert), or the
    study's full-data expert when ``target.shots is None``. Cached for the last target."""
    if ctx._target_model[0] == target.key:
        return ctx._target_model[1]
    if target.shots is None:
        model, _ = load_expert(ctx.experts[target.task], ctx.backbone, trainable=True)
    else:
        spec = get_task(target.task)
        m = ctx.adapter()
        seed_everything(target.seed)
        model = attach(ctx.backbone.fresh_trunk(), m).to(ctx.backbone.device)
        model.eval()
        params = [p for p in model.parameters() if p.requires_grad]
        cfg = ctx.train_config(target.seed)
        train_loop(ctx.backbone, model, target.tensors, list(spec.verbalizers), params, cfg.lr or m.lr, cfg)
    ctx._target_model = (target.key, model)
    return model


def _source_fisher(source: str, mode: str, ctx: PredictorContext) -> dict[str, np.ndarray]:
    def compute():
        model, _ = load_expert(ctx.experts[source], ctx.backbone, trainable=True)
        return fisher_information(model, ctx.backbone, source_tensors(source, ctx.backbone),
                                  list(get_task(source).verbalizers), mode, ctx.fisher_n, ctx.seed, ctx.fisher_batch)
    return ctx.cached(f"fisher-{mode}", source, {"n": ctx.fisher_n, "seed": ctx.seed, "batch": ctx.fisher_batch}, compute)


def _target_fisher(target: TargetData, ctx: PredictorContext, mode: str) -> dict[str, np.ndarray]:
    key = ("target-fisher", mode, target.key)
    if key not in ctx._mem:
        model = target_expert(target, ctx)
        ctx._mem[key] = fisher_information(model, ctx.backbone, target.tensors, list(get_task(target.task).verbalizers),
                                           mode, ctx.fisher_n, ctx.seed, ctx.fisher_batch)
    return ctx._mem[key]


def _fisher_predictor(mode: str, per_group: bool):
    def fn(target: TargetData, ctx: PredictorContext) -> np.ndarray:
        t = _target_fisher(target, ctx, mode)
        return fisher_row(t, [_source_fisher(s, mode, ctx) for s in ctx.sources_for(target.task)], per_group,
                          eps=1e-12 if per_group else 1e-8)
    return fn


fisher = _fisher_predictor("empirical", True)
fisher.__doc__ = """Fisher as today: per-sample empirical Fisher of the target's expert on its available examples
(at most ``fisher_n``) and of each source's expert on ``fisher_n`` of its own training examples;
per-group pair-normalised cosine, mean over groups."""
fisher_flat = _fisher_predictor("empirical", False)
fisher_flat.__doc__ = """Fisher over the whole vector (the official Task2Vec code): the same Fisher as ``fisher``,
one pair-normalised cosine of the concatenated vector (eps 1e-8)."""
fisher_batch = _fisher_predictor("batch", False)
fisher_batch.__doc__ = """Fisher from per-batch gradients (the official code): squared gradient of each minibatch's
mean loss (``fisher_batch`` examples), averaged; whole-vector pair-normalised cosine."""
fisher_sampled = _fisher_predictor("sampled", True)
fisher_sampled.__doc__ = """Task2Vec's "true" Fisher: per-sample gradients with the label sampled from the model's
predictive distribution (seeded), per-group pair-normalised cosine."""


def probe_model(ctx: PredictorContext) -> torch.nn.Module:
    """One shared probe point: a fresh adapter of ``ctx.method`` (seed ``probe_seed``) whose LoRA B
    matrices are drawn N(0, probe_std) (peft initialises B to 0, where every A gradient vanishes).
    Fixed for the whole study, independent of every task."""
    if ctx._probe is None:
        seed_everything(ctx.probe_seed)
        model = attach(ctx.backbone.fresh_trunk(), ctx.adapter()).to(ctx.backbone.device)
        g = torch.Generator().manual_seed(ctx.probe_seed)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * ctx.probe_std)
        model.eval()
        ctx._probe = model
    return ctx._probe


def fisher_probe(target: TargetData, ctx: PredictorContext) -> np.ndarray:
    """Fisher at one shared probe point (as Task2Vec measures every task on one probe network):
    every task's empirical Fisher is taken at the same adapter weights (:func:`probe_model`), the
    target's on its available examples, each source's on ``fisher_n`` of its training examples;
    per-group pair-normalised cosine. Needs no target expert."""
    model = probe_model(ctx)
    srcs = [_source_probe(s, ctx) for s in ctx.sources_for(target.task)]
    return fisher_row(fisher_information(model, ctx.backbone, target.tensors, list(get_task(target.task).verbalizers),
                                         "empirical", ctx.fisher_n, ctx.seed), srcs, per_group=True)


def _source_probe(source: str, ctx: PredictorContext) -> dict[str, np.ndarray]:
    def compute():
        return fisher_information(probe_model(ctx), ctx.backbone, source_tensors(source, ctx.backbone),
                                  list(get_task(source).verbalizers), "empirical", ctx.fisher_n, ctx.seed)
    params = {"n": ctx.fisher_n, "seed": ctx.seed, "probe_seed": ctx.probe_seed, "probe_std": ctx.probe_std}
    return ctx.cached("fisher-probe", source, params, compute)


# ----------------------------------------------------------------------------- the baselines

def _cos(a: np.ndarray, B: np.ndarray) -> np.ndarray:
    na = np.linalg.norm(a)
    nb = np.linalg.norm(B, axis=1)
    with np.errstate(all="ignore"):
        out = (B @ a) / (na * nb)
    return np.where((na > 0) & (nb > 0), out, 0.0)


def weights(target: TargetData, ctx: PredictorContext) -> np.ndarray:
    """The experts' flattened adapter weights, cosine (as today): the target's expert at its data
    size (:func:`target_expert`) against each source's full-data expert."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(target_expert(target, ctx))
    t = {k.replace("base_model.model.", ""): v.detach().double().cpu().numpy().ravel() for k, v in state.items()}
    keys = sorted(t)
    src = []
    for s in ctx.sources_for(target.task):
        w = _source_weights(s, ctx)
        if sorted(w) != keys:
            raise EmbeddingError(f"{s}'s adapter has other tensors than the target's expert")
        src.append(np.concatenate([w[k] for k in keys]))
    return _cos(np.concatenate([t[k] for k in keys]), np.stack(src))


@torch.no_grad()
def _source_weights(source: str, ctx: PredictorContext) -> dict[str, np.ndarray]:
    return ctx.cached("weights", source, {}, lambda: weight_embedding(ctx.experts[source]))


def data(target: TargetData, ctx: PredictorContext) -> np.ndarray:
    """Data only (as today): mean pooled backbone features of the target's available examples
    against each source's mean over ``data_n`` of its training examples, cosine."""
    t = target.tensors
    feats = torch.cat([ctx.backbone.encode(t.batch(range(i, min(i + 64, len(t))))[0]) for i in range(0, len(t), 64)])
    tv = feats.mean(0).double().cpu().numpy()
    src = [_source_data(s, ctx)["pooled"] for s in ctx.sources_for(target.task)]
    return _cos(tv, np.stack(src))


def _source_data(source: str, ctx: PredictorContext) -> dict[str, np.ndarray]:
    return ctx.cached("data", source, {"n": ctx.data_n, "seed": ctx.seed},
                      lambda: data_embedding(source, ctx.backbone, ctx.data_n, ctx.seed))


def same_modality(target: TargetData, ctx: PredictorContext) -> np.ndarray:
    """The trivial rule: 1 for a source of the target's modality, 0 otherwise."""
    m = get_task(target.task).modality
    return np.array([float(get_task(s).modality == m) for s in ctx.sources_for(target.task)])


def random(target: TargetData, ctx: PredictorContext) -> np.ndarray:
    """Chance: uniform scores, seeded by (target, seed)."""
    h = int(hashlib.sha256(f"{target.task}/{target.seed}/{ctx.seed}".encode()).hexdigest()[:8], 16)
    return np.random.default_rng(h).random(len(ctx.sources_for(target.task)))


# ----------------------------------------------------------------------------- source experts on the target

@torch.no_grad()
def source_view(target: TargetData, source: str, ctx: PredictorContext) -> tuple[np.ndarray, np.ndarray]:
    """The source expert applied to the target's available examples: pooled features (N, H) and
    label-as-text logits over the *target's* verbalisers (N, C). Cached per (target data, source)."""
    key = ("view", target.key, source)
    if key not in ctx._mem:
        model, _ = load_expert(ctx.experts[source], ctx.backbone)
        label_emb = ctx.backbone.encode_texts(list(get_task(target.task).verbalizers), model)
        t = target.tensors
        feats = []
        for i in range(0, len(t), 64):
            feats.append(ctx.backbone.encode(t.batch(range(i, min(i + 64, len(t))))[0], model))
        f = torch.cat(feats)
        ctx._mem[key] = (f.double().cpu().numpy(), (ctx.backbone.logit_scale * f @ label_emb.T).double().cpu().numpy())
    return ctx._mem[key]


def expert_accuracy(target: TargetData, ctx: PredictorContext) -> np.ndarray:
    """The source expert's own accuracy on the target's available examples (label-as-text lets
    every expert score every task)."""
    y = target.tensors.labels.numpy()
    return np.array([float(np.mean(source_view(target, s, ctx)[1].argmax(1) == y)) for s in ctx.sources_for(target.task)])


def expert_loglik(target: TargetData, ctx: PredictorContext) -> np.ndarray:
    """LEEP-style: the source expert's mean log-likelihood of the true label over the target's
    available examples (softmax over the target's label texts)."""
    y = target.tensors.labels.numpy()
    out = []
    for s in ctx.sources_for(target.task):
        z = source_view(target, s, ctx)[1]
        z = z - z.max(1, keepdims=True)
        out.append(float(np.mean(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(1)))))
    return np.array(out)


def logme_evidence(features: np.ndarray, y: np.ndarray, tol: float = 1e-3, max_iter: int = 100) -> tuple[float, float, float]:
    """Log maximum evidence of a Bayesian linear model ``y = f w + noise`` (LogME, You et al.,
    ICML 2021, Algorithm 1), per example: returns ``(evidence / N, alpha, beta)``.

    Prior ``w ~ N(0, alpha^-1 I_D)``, noise ``N(0, beta^-1)``; alpha and beta are found by the
    fixed-point (MacKay) iteration. Everything is expressed in the thin SVD ``f = U S V^T``
    (``sigma = s^2``, ``c = U^T y``), so N < D (a few-shot target) costs O(N^2 D), not O(D^3)."""
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    N, D = f.shape
    U, s, _ = np.linalg.svd(f, full_matrices=False)
    sigma = s ** 2
    c = U.T @ y
    y_perp = max(float(y @ y - c @ c), 0.0)  # the part of y outside the span of f

    def terms(alpha, beta):
        d = alpha + beta * sigma
        mm = float(np.sum(beta ** 2 * sigma * c ** 2 / d ** 2))  # |m|^2, m the posterior mean
        res = y_perp + float(np.sum((alpha * c / d) ** 2))  # |y - f m|^2
        gamma = float(np.sum(beta * sigma / d))
        return mm, res, gamma, d

    alpha, beta = 1.0, 1.0
    for _ in range(max_iter):
        mm, res, gamma, _ = terms(alpha, beta)
        new_alpha = gamma / max(mm, 1e-12)
        new_beta = max(N - gamma, 1e-12) / max(res, 1e-12)
        done = abs(new_alpha / new_beta - alpha / beta) / (alpha / beta) < tol
        alpha, beta = new_alpha, new_beta
        if done:
            break
    mm, res, _, d = terms(alpha, beta)
    logdet = float(np.sum(np.log(d))) + (D - len(sigma)) * np.log(alpha)
    ev = (D / 2 * np.log(alpha) + N / 2 * np.log(beta) - 0.5 * logdet - beta / 2 * res - alpha / 2 * mm
          - N / 2 * np.log(2 * np.pi))
    return float(ev / N), float(alpha), float(beta)


def logme_score(features: np.ndarray, labels: np.ndarray, num_classes: int | None = None) -> float:
    """LogME of a classification task: the mean over classes of the evidence of the one-hot column."""
    labels = np.asarray(labels)
    C = int(num_classes if num_classes is not None else labels.max() + 1)
    return float(np.mean([logme_evidence(features, (labels == c).astype(np.float64))[0] for c in range(C)]))


def logme(target: TargetData, ctx: PredictorContext) -> np.ndarray:
    """LogME (You et al., ICML 2021) of each source-adapted representation (the source expert's
    pooled features of the target's available examples) for the target's labels."""
    y = target.tensors.labels.numpy()
    C = get_task(target.task).num_classes
    return np.array([logme_score(source_view(target, s, ctx)[0], y, C) for s in ctx.sources_for(target.task)])


def knn_loo_accuracy(features: np.ndarray, labels: np.ndarray, k: int = KNN_K) -> float:
    """Leave-one-out k-NN accuracy of ``features`` (N, D) for ``labels``: each example classified by its
    ``k`` nearest others (cosine distance; scikit-learn's KNeighborsClassifier, uniform votes), over
    ``LeaveOneOut`` folds. 0 with fewer than 2 examples. With one example per class no example has a
    same-class neighbour, so every source scores 0 (a constant row)."""
    from sklearn.model_selection import LeaveOneOut, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    f, y = np.asarray(features, dtype=np.float64), np.asarray(labels)
    if len(y) < 2:
        return 0.0
    knn = KNeighborsClassifier(n_neighbors=min(k, len(y) - 1), metric="cosine", algorithm="brute")
    return float(np.mean(cross_val_score(knn, f, y, cv=LeaveOneOut())))


def knn_accuracy(target: TargetData, ctx: PredictorContext) -> np.ndarray:
    """k-NN accuracy (leave-one-out, :data:`KNN_K` neighbours, cosine) of each source expert's pooled
    features of the target's available examples (:func:`source_view`) for the target's labels."""
    y = target.tensors.labels.numpy()
    return np.array([knn_loo_accuracy(source_view(target, s, ctx)[0], y) for s in ctx.sources_for(target.task)])


def same_family(target: TargetData, ctx: PredictorContext) -> np.ndarray:
    """The reference rule: 1 for a source of the target's family, 0 otherwise (a user's task has no
    family: every source 0). A reference only: it reads the suite's designed relations."""
    names = ctx.sources_for(target.task)
    return same_family_row(target.task, names, {t: get_task(t).family for t in [target.task, *names]})


# ----------------------------------------------------------------------------- the registry

Predictor = Callable[[TargetData, PredictorContext], np.ndarray]

#: every predictor, by the name used in plans, logs and the dashboard
PREDICTORS: dict[str, Predictor] = {
    "fisher": fisher, "fisher_flat": fisher_flat, "fisher_batch": fisher_batch, "fisher_sampled": fisher_sampled,
    "fisher_probe": fisher_probe, "data": data, "weights": weights, "same_modality": same_modality,
    "random": random, "expert_accuracy": expert_accuracy, "expert_loglik": expert_loglik, "logme": logme,
    "knn_accuracy": knn_accuracy, "same_family": same_family,
}
if tuple(PREDICTORS) != PREDICTOR_NAMES:  # the torch-free list the dashboard validates files against
    raise RuntimeError(f"spec.vocab.PREDICTOR_NAMES {PREDICTOR_NAMES} differs from PREDICTORS {tuple(PREDICTORS)}")


#: each predictor's source side (what :meth:`PredictorContext.cached` keeps per source); the others
#: (same_modality, random, expert_accuracy, expert_loglik, logme, knn_accuracy, same_family) have none to
#: ship: they apply the source experts to the target's own examples, or use no data at all
SOURCE_SIDE = {
    "fisher": lambda s, ctx: _source_fisher(s, "empirical", ctx),
    "fisher_flat": lambda s, ctx: _source_fisher(s, "empirical", ctx),
    "fisher_batch": lambda s, ctx: _source_fisher(s, "batch", ctx),
    "fisher_sampled": lambda s, ctx: _source_fisher(s, "sampled", ctx),
    "fisher_probe": _source_probe,
    "data": _source_data,
    "weights": _source_weights,
}


def ship_source_side(predictors, ctx: PredictorContext, folder: Path,
                     on_source: Callable[[int, int, str], None] | None = None) -> list[Path]:
    """Write every source's source-side rows of ``predictors`` into ``folder`` (a study's
    :meth:`~pitune_core.paths.StudyPaths.source_side`) with ``ctx``'s settings beside them: rows
    ``ctx`` already holds (in memory, or in its ``cache_dir``) are copied, the rest computed.
    Returns the files of ``folder``, the settings first."""
    folder = Path(folder)
    writer = PredictorContext(ctx.backbone, ctx.experts, **ctx.settings(), cache_dir=folder,
                              shipped=ctx.cache_dir, on_progress=ctx.on_progress, keep=True)
    writer._mem = ctx._mem  # rows already computed in this process are not computed again
    writer._probe = ctx._probe
    files = [write_shipped_settings(writer, folder)]
    jobs = [(p, s) for p in dict.fromkeys(predictors) if p in SOURCE_SIDE for s in ctx.experts]
    for i, (p, s) in enumerate(jobs, 1):
        SOURCE_SIDE[p](s, writer)
        if on_source is not None:
            on_source(i, len(jobs), s)
    return files + sorted(folder.glob("*.npz"))


def describe() -> dict[str, str]:
    """Name -> the first line of the predictor's docstring."""
    return {n: " ".join((fn.__doc__ or "").split()) for n, fn in PREDICTORS.items()}


def predict_row(predictor: str, target: TargetData, ctx: PredictorContext) -> np.ndarray:
    """A target's predicted transfer from every source (``ctx.sources_for(target.task)`` order)."""
    if predictor not in PREDICTORS:
        raise ValueError(f"unknown predictor {predictor!r}; choose one of {', '.join(PREDICTORS)}")
    if target.task not in ctx.experts and target.shots is None:
        raise ValueError(f"no full-data expert for {target.task}")
    row = np.asarray(PREDICTORS[predictor](target, ctx), dtype=np.float64)
    n = len(ctx.sources_for(target.task))
    if row.shape != (n,) or not np.isfinite(row).all():
        raise EmbeddingError(f"{predictor} gave a bad row for {target.task} (shape {row.shape}, finite: "
                             f"{bool(np.isfinite(row).all())})", [target.task])
    return row


# ----------------------------------------------------------------------------- stability

def fisher_stability(experts: dict[str, Path], backbone: UnifiedBackbone, sizes=(8, 16, 32, 64), k: int = QUALITY_K,
                     seed: int = 0, threshold: float = 0.9, mode: str = "empirical") -> dict:
    """How stable is the Fisher task graph, measured with *independent* samples?

    For every sample size N, each task's Fisher is computed twice from two disjoint sets of N of
    its training examples (one seeded permutation: rows [0, N) and [N, 2N)), giving two
    similarity matrices; per task, the overlap of its top-k neighbours in the two, and the
    Spearman correlation of all pairs. (A prefix of the same permutation, N vs 2N samples, shares
    half its data and overstates stability.) ``samples_for_stable_topk`` is the smallest N whose
    mean overlap reaches ``threshold`` (None if none does)."""
    from scipy.stats import spearmanr

    names = list(experts)
    if len(names) < k + 1:
        raise ValueError(f"need at least {k + 1} tasks for a top-{k} stability check")
    models = {t: load_expert(experts[t], backbone, trainable=True)[0] for t in names}
    tensors = {t: source_tensors(t, backbone) for t in names}
    out = {"k": k, "threshold": threshold, "mode": mode, "sizes": {}}
    for N in sizes:
        small = [t for t in names if len(tensors[t]) < 2 * N]
        if small:
            out["sizes"][str(N)] = {"skipped": f"{', '.join(small)} have fewer than {2 * N} training examples"}
            continue
        halves = []
        for part in (0, 1):
            per_task = {}
            for t in names:
                perm = torch.randperm(len(tensors[t]), generator=torch.Generator().manual_seed(seed)).tolist()
                rows = perm[part * N:(part + 1) * N]
                per_task[t] = fisher_information(models[t], backbone, tensors[t], list(get_task(t).verbalizers), mode,
                                                 seed=seed, indices=rows)
            groups = {g: np.stack([per_task[t][g] for t in names]) for g in per_task[names[0]]}
            halves.append(fisher_similarity(groups, dtype="float64"))
        S1, S2 = halves
        overlap = {t: len({a for a, _ in top_k(S1, names, t, k)} & {a for a, _ in top_k(S2, names, t, k)}) / k
                   for t in names}
        iu = np.triu_indices(len(names), 1)
        rho = float(spearmanr(S1[iu], S2[iu]).statistic) if len(iu[0]) > 2 else float("nan")
        out["sizes"][str(N)] = {"mean_topk_overlap": float(np.mean(list(overlap.values()))), "per_task": overlap,
                                "spearman_all_pairs": rho}
    stable = [int(N) for N, v in out["sizes"].items() if v.get("mean_topk_overlap", -1) >= threshold]
    out["samples_for_stable_topk"] = min(stable) if stable else None
    return out
