"""Score an already-tuned model on in-distribution, shifted and corrupted test sets (issue 28, item 3).

No further training: the model a run ends with (``InterpolatedExperts.bake()``, a trained expert's
peft model, ...) is scored as :func:`pitune_core.model.experts.evaluate` scores it, on

- ``in-distribution``: the target's own test split;
- ``shifted``: each shift source's test split with the target's training examples dropped
  (:func:`pitune_core.data.robustness.shifted_set`; none for a target outside every shift group: then
  one row with ``value`` None, ``n`` 0 and the reason in ``note``, never an invented score);
- ``corrupted``: corrupted copies of the target's test split, every applicable corruption at each
  asked severity (:func:`pitune_core.data.robustness.corrupt`).

The sets of a target (with their image features) are built once per process and reused for every
model scored on them (:func:`robustness_sets`): the comparison scores many models of one target.
Rows are approach-agnostic: ``{"target", "set", "source", "corruption", "severity", "metric", "value",
"accuracy", "n", "dropped", "note"}`` (``value`` in the task's headline metric, 0-1); the caller adds
its approach / seed. :mod:`pitune_core.study.robustness` summarises them.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from pitune_core.data.robustness import corrupt, corruptions_for, no_shift_reason, shift_sources, shifted_set
from pitune_core.data.tasks import Split, get_task
from pitune_core.model.backbone import TaskTensors, UnifiedBackbone, VisionEncoder, task_features
from pitune_core.model.experts import evaluate, prepare_task
from pitune_core.spec.vocab import CORRUPTIONS, DEFAULT_SEVERITIES, ROBUSTNESS_SETS, TEXT_CORRUPTIONS

IN_DISTRIBUTION, SHIFTED, CORRUPTED = ROBUSTNESS_SETS
#: the fields of a robustness row, in order
ROW_FIELDS = ("target", "set", "source", "corruption", "severity", "metric", "value", "accuracy", "n", "dropped", "note")
#: the named stage of a run that scores its tuned model on these sets
ROBUSTNESS_STAGE = "score the tuned model on shifted and corrupted test sets"
_CACHE_SIZE = 4  # targets whose sets a process keeps (their corrupted image features are the cost)


@dataclass
class EvalSet:
    """One evaluation set of a target: ``tensors`` ready for the backbone (None: no such set, ``note`` says why)."""

    set: str
    tensors: TaskTensors | None
    source: str | None = None
    corruption: str | None = None
    severity: int | None = None
    dropped: int = 0
    note: str | None = None


_SETS: OrderedDict = OrderedDict()
_ENCODERS: dict = {}


def _encoder(backbone: UnifiedBackbone) -> VisionEncoder:
    key = (backbone.vision.id, str(backbone.device))
    if key not in _ENCODERS:
        _ENCODERS[key] = VisionEncoder(backbone.vision, device=backbone.device)
    return _ENCODERS[key]


def _tensors(split: Split, backbone: UnifiedBackbone, visual: torch.Tensor | None = None) -> TaskTensors:
    """A split as backbone tensors; image features computed here unless given (``visual``)."""
    if split.images is not None and visual is None:
        visual = _encoder(backbone).features(split.images, desc="robustness image features")
    return TaskTensors(split.texts, visual if split.images is not None else None,
                       torch.as_tensor(split.labels, dtype=torch.long))


def _pick(n: int, max_examples: int | None, seed: int) -> np.ndarray:
    """All rows, or a seeded sorted sample of ``max_examples`` of them."""
    if max_examples is None or n <= max_examples:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:max_examples])


def robustness_sets(target: str, backbone: UnifiedBackbone, shifted: bool = True,
                    corruptions: tuple[str, ...] | None = None, severities: tuple[int, ...] = DEFAULT_SEVERITIES,
                    seed: int = 0, max_examples: int | None = None) -> list[EvalSet]:
    """Every evaluation set of ``target``: in-distribution first, then shifted (one per shift source, or
    one empty set with the reason), then each corruption (default: every one that applies to the
    task) at each severity. ``max_examples`` scores a seeded sample of each set (None: all). Cached
    per process by all of the arguments."""
    spec = get_task(target)
    key = (target, backbone.backbone_id, backbone.vision.id, shifted, corruptions, tuple(severities), seed, max_examples)
    if key in _SETS:
        _SETS.move_to_end(key)
        return _SETS[key]
    data, tensors = prepare_task(spec, backbone)
    rows = _pick(len(data.test), max_examples, seed)
    test = data.test.subset(rows)
    out = [EvalSet(IN_DISTRIBUTION, tensors["test"].subset(rows))]
    if shifted:
        sources = shift_sources(target)
        if not sources:
            out.append(EvalSet(SHIFTED, None, note=no_shift_reason(target)))
        for s in sources:
            src_data = get_task(s).load()
            sh = shifted_set(target, s, data, src_data)
            sub = _pick(len(sh.indices), max_examples, seed)
            feats = task_features(src_data, config=backbone.vision)
            visual = feats["test"][torch.as_tensor(sh.indices[sub], dtype=torch.long)] if feats is not None else None
            out.append(EvalSet(SHIFTED, _tensors(sh.split.subset(sub), backbone, visual), source=s, dropped=sh.dropped))
    names = corruptions_for(test) if corruptions is None else tuple(corruptions)
    bad = [c for c in names if c not in CORRUPTIONS]
    if bad:
        raise ValueError(f"unknown corruption(s) {', '.join(bad)}; choose from {', '.join(CORRUPTIONS)}")
    for c in names:
        # a text corruption leaves a pair's image as it is: its cached features are reused
        visual = tensors["test"].visual[torch.as_tensor(rows)] if c in TEXT_CORRUPTIONS and test.images is not None else None
        for sev in severities:
            out.append(EvalSet(CORRUPTED, _tensors(corrupt(test, c, sev, seed), backbone, visual), corruption=c,
                               severity=sev))
    _SETS[key] = out
    while len(_SETS) > _CACHE_SIZE:
        _SETS.popitem(last=False)
    return out


def score_sets(target: str, backbone: UnifiedBackbone, model, sets: list[EvalSet]) -> list[dict]:
    """One row per set (:data:`ROW_FIELDS`): the model's score with no training (``model`` None: the bare backbone)."""
    spec = get_task(target)
    rows = []
    for s in sets:
        row = dict.fromkeys(ROW_FIELDS)
        row.update(target=target, set=s.set, source=s.source, corruption=s.corruption, severity=s.severity,
                   metric=spec.metric, n=0 if s.tensors is None else len(s.tensors), dropped=s.dropped, note=s.note)
        if s.tensors is not None and len(s.tensors):
            m = evaluate(backbone, model, s.tensors, spec)  # inference mode, as every score of a run
            row.update(value=float(m[spec.metric]), accuracy=float(m["accuracy"]))
        rows.append(row)
    return rows


def score_robustness(target: str, backbone: UnifiedBackbone, model, **options) -> list[dict]:
    """:func:`score_sets` on :func:`robustness_sets` (``options``: its keyword arguments)."""
    return score_sets(target, backbone, model, robustness_sets(target, backbone, **options))
