"""A task's data: the containers (:class:`Split`, :class:`TaskData`), the task type (:class:`TaskSpec`),
the seeded train/val/test split and the safetensors + JSON cache (never pickle).

The lowest module of ``data/``: the suite (:mod:`pitune_core.data.suite`), its cross-task dedup
(:mod:`pitune_core.data.dedup`) and the user's own tasks (:mod:`pitune_core.data.user_tasks`) build on it;
:mod:`pitune_core.data.tasks` is the catalogue that re-exports all of it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from safetensors.numpy import load_file, save_file

from pitune_core.common import os_error_of
from pitune_core.data.sources import SOURCES
from pitune_core.paths import cache_dir

SPLITS = ("train", "val", "test")
# bump when a builder or the split rule changes what it produces (2: cross-task dedup; 3: the family
# suite of issue 27, disjoint image pools within a family, dedup by image alone too)
DATA_VERSION = 3


class UnknownTaskError(ValueError):
    """A task name that is not in the registry."""


class TaskDataError(ValueError):
    """A request the task's data cannot satisfy (e.g. more shots than examples)."""


# ----------------------------------------------------------------------------- data containers

@dataclass
class Split:
    """One split of a task: parallel texts / images / labels."""

    labels: np.ndarray  # int64 (n,)
    texts: list[str] | None = None
    images: np.ndarray | None = None  # uint8 (n, H, W, 3)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, idx: Sequence[int] | np.ndarray) -> "Split":
        idx = np.asarray(idx, dtype=np.int64)
        return Split(
            labels=self.labels[idx],
            texts=[self.texts[i] for i in idx] if self.texts is not None else None,
            images=self.images[idx] if self.images is not None else None,
        )


@dataclass
class TaskData:
    spec: "TaskSpec"
    train: Split
    val: Split
    test: Split

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; choose one of {SPLITS}")
        return getattr(self, name)

    def few_shot(self, k: int, seed: int = 0, split: str = "train") -> np.ndarray:
        """Indices of ``k`` examples per class from ``split``, sampled with ``seed``.

        Raises :class:`TaskDataError` when a class has fewer than ``k`` examples, naming the
        largest ``k`` the task supports.
        """
        if k < 1:
            raise TaskDataError(f"shots must be >= 1, got {k}")
        labels = self.split(split).labels
        counts = np.bincount(labels, minlength=self.spec.num_classes)
        if counts.min() < k:
            worst = int(np.argmin(counts))
            raise TaskDataError(
                f"{self.spec.name}: shots={k} is larger than the data: class "
                f"{self.spec.labels[worst]!r} has only {counts[worst]} {split} examples "
                f"(the maximum shots for this task is {counts.min()}).")
        rng = np.random.default_rng(seed)
        picks = [rng.choice(np.flatnonzero(labels == c), size=k, replace=False)
                 for c in range(self.spec.num_classes)]
        return np.sort(np.concatenate(picks))


@dataclass
class RawExamples:
    """What a builder returns: all examples, optionally with a predefined split (0/1/2)."""

    labels: np.ndarray
    texts: list[str] | None = None
    images: np.ndarray | None = None
    split: np.ndarray | None = None


@dataclass(frozen=True)
class TaskSpec:
    """A task's identity: name, modality, verbalised labels, metric and data source."""

    name: str
    modality: str
    labels: tuple[str, ...]
    verbalizers: tuple[str, ...]
    sources: tuple[str, ...]
    description: str
    builder: Callable[[], RawExamples] = field(repr=False, compare=False)
    family: str = "control"  # one of suite.FAMILIES ("user" for a user's own task)
    concepts: tuple[str, ...] = ()  # label meanings shared with other tasks of the family
    metric: str = "accuracy"  # or "macro_f1" where classes are skewed
    max_train: int = 1000
    max_val: int = 200
    max_test: int = 500
    test_fraction: float = 0.2  # without an official split: this fraction of the examples is test
    seed: int = 0
    #: applied to the loaded splits: a suite task's removal of cross-task duplicates (given by the suite,
    #: :mod:`pitune_core.data.suite`, which knows the other tasks); None loads the splits as built
    dedup: Callable[[TaskData], TaskData] | None = field(default=None, repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def source_pins(self) -> list[str]:
        return [SOURCES[s].pin if s in SOURCES else s for s in self.sources]

    def cache_path(self) -> Path:
        return cache_dir() / "tasks" / f"v{DATA_VERSION}" / self.name

    def load(self) -> TaskData:
        """Load the task, building and caching it on first use (then its ``dedup``)."""
        data = load_raw_task_data(self)
        return data if self.dedup is None else self.dedup(data)

    def info(self, data: TaskData | None = None) -> dict:
        d = {"name": self.name, "modality": self.modality, "family": self.family,
             "concepts": list(self.concepts), "num_classes": self.num_classes, "labels": list(self.labels), "verbalizers": list(self.verbalizers),
             "metric": self.metric, "source": ", ".join(self.source_pins()),
             "description": self.description}
        if data is not None:
            d.update(num_train=len(data.train), num_val=len(data.val), num_test=len(data.test))
        return d


# ----------------------------------------------------------------------------- splitting + cache

def make_splits(raw: RawExamples, spec: TaskSpec) -> TaskData:
    """Seeded train/val/test split with per-split caps.

    Where the source has an official test split it is kept (subsampled to the cap) and
    validation comes out of the official training data.
    """
    rng = np.random.default_rng(spec.seed)
    n = raw.labels.shape[0]
    if raw.split is None:
        order = rng.permutation(n)
        n_test = min(spec.max_test, max(1, int(round(spec.test_fraction * n))))
        n_val = min(spec.max_val, max(1, int(round(0.1 * n))))
        test, val, train = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
    else:
        pool = rng.permutation(np.flatnonzero(raw.split == 0))
        test = rng.permutation(np.flatnonzero(raw.split == 2))
        n_val = min(spec.max_val, max(1, int(round(0.1 * len(pool)))))
        val, train = pool[:n_val], pool[n_val:]
    train, test = train[: spec.max_train], test[: spec.max_test]

    def take(idx):
        idx = np.sort(idx)
        return Split(labels=raw.labels[idx].astype(np.int64),
                     texts=[raw.texts[i] for i in idx] if raw.texts is not None else None,
                     images=raw.images[idx] if raw.images is not None else None)

    return TaskData(spec, take(train), take(val), take(test))


def _save(data: TaskData, path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    arrays, texts = {}, {}
    for s in SPLITS:
        sp = data.split(s)
        arrays[f"{s}.labels"] = sp.labels
        if sp.images is not None:
            arrays[f"{s}.images"] = np.ascontiguousarray(sp.images)
        texts[s] = sp.texts
    tmp = path / "arrays.safetensors.tmp"
    try:
        save_file(arrays, str(tmp))
        (path / "texts.json.tmp").write_text(json.dumps(texts))
    except BaseException as e:  # e.g. the cache disk filled mid-write: leave no *.tmp behind
        for t in (tmp, path / "texts.json.tmp"):
            t.unlink(missing_ok=True)
        if (os_err := os_error_of(e, tmp)) is not None and os_err is not e:  # safetensors' wrapped OSError
            raise os_err from e
        raise
    os.replace(tmp, path / "arrays.safetensors")
    os.replace(path / "texts.json.tmp", path / "texts.json")
    (path / "info.json").write_text(json.dumps(data.spec.info(data), indent=2))


def _load(spec: TaskSpec, path: Path) -> TaskData:
    arrays = load_file(str(path / "arrays.safetensors"))
    texts = json.loads((path / "texts.json").read_text())
    splits = {s: Split(labels=arrays[f"{s}.labels"], texts=texts[s], images=arrays.get(f"{s}.images"))
              for s in SPLITS}
    return TaskData(spec, **splits)


def load_cached(spec: TaskSpec, build: Callable[[], TaskData]) -> TaskData:
    """The task's splits from its cache folder, or ``build()`` them and cache them (a corrupt cache
    is rebuilt)."""
    path = spec.cache_path()
    if (path / "info.json").exists():
        try:
            return _load(spec, path)
        except Exception:  # corrupt cache: rebuild
            pass
    data = build()
    _save(data, path)
    return data


def load_raw_task_data(spec: TaskSpec) -> TaskData:
    """The task's splits as built from its archives (cached), before deduplication."""
    def build() -> TaskData:
        raw = spec.builder()
        if raw.texts is not None and len(raw.texts) != len(raw.labels):
            raise AssertionError(f"{spec.name}: builder returned mismatched texts/labels")
        return make_splits(raw, spec)

    return load_cached(spec, build)
