"""The cross-task dedup rule, for a suite that is passed in: each example's keys, a suite's table, and
applying a task's row of it. :mod:`pitune_core.data.dedup` states the rule and binds it to the built-in
suite (its table, its report); the suite's tasks apply it when they load (:mod:`pitune_core.data.suite`),
which is why this module sits below the suite and takes it as an argument.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import unicodedata
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from pitune_core.data.taskdata import DATA_VERSION, SPLITS, Split, TaskData, TaskSpec, load_raw_task_data
from pitune_core.paths import cache_dir


TABLE_PATH = Path(__file__).with_name("dedup_table.json")
TABLE_FORMAT = "pitune-dedup/2"
EVAL_SPLITS = ("val", "test")
RULE = ("an example in a task's val or test split is removed when another suite task's train split holds its "
        "image (content or near-duplicate hash, whatever text comes with it) or its text (where either task is "
        "a language task); train splits are never changed")
KINDS = ("image", "near_image", "text")  # why an example was removed (the first that applies)

_NON_ALNUM = re.compile(r"[\W_]+", re.UNICODE)


def normalise_text(text: str) -> str:
    """NFKC, casefold, runs of non-alphanumerics → one space, stripped."""
    return _NON_ALNUM.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def image_hash(image: np.ndarray) -> str:
    """SHA-256 of an image's shape and uint8 pixels."""
    a = np.ascontiguousarray(image, dtype=np.uint8)
    h = hashlib.sha256(repr(a.shape).encode())
    h.update(a.tobytes())
    return h.hexdigest()


def example_keys(split: Split) -> list[str]:
    """One 128-bit hex key per example of a split (see the module docstring for the rule)."""
    keys = []
    for i in range(len(split)):
        h = hashlib.blake2b(digest_size=16)
        if split.texts is not None:
            h.update(b"text\0" + normalise_text(split.texts[i]).encode("utf-8") + b"\0")
        if split.images is not None:
            h.update(b"image\0" + image_hash(split.images[i]).encode())
        keys.append(h.hexdigest())
    return keys


def near_image_hash(image: np.ndarray) -> str:
    """A 16×16 difference hash (256 bits) of an image's grey levels: equal for a resized, re-encoded or
    slightly re-toned copy of the same picture (a near duplicate), rarely for two different pictures."""
    from PIL import Image

    a = np.ascontiguousarray(image, dtype=np.uint8)
    grey = Image.fromarray(a if a.ndim == 2 else a[..., :3]).convert("L").resize((17, 16), Image.BILINEAR)
    g = np.asarray(grey, dtype=np.int16)
    return np.packbits(g[:, 1:] > g[:, :-1]).tobytes().hex()


def component_keys(split: Split) -> dict[str, list[str | None]]:
    """Per example: its normalised text (``text``), image content hash (``image``) and near-duplicate
    hash (``near_image``); None where the example has no such part."""
    n = len(split)
    return {"text": [normalise_text(t) for t in split.texts] if split.texts is not None else [None] * n,
            "image": [image_hash(im) for im in split.images] if split.images is not None else [None] * n,
            "near_image": [near_image_hash(im) for im in split.images] if split.images is not None else [None] * n}


def text_counts(modality_a: str, modality_b: str) -> bool:
    """Whether one text shared by tasks of these two modalities is a shared example: only where either
    is a language task (two vision-language tasks may share a question template, which is no example)."""
    return "language" in (modality_a, modality_b)


def seen_in_train(split: Split, modality: str, train: Split, train_modality: str) -> np.ndarray:
    """Per example of ``split`` (of a task of ``modality``): True where ``train`` (the training split of a
    task of ``train_modality``) holds its image (content or near-duplicate key, whatever text comes with
    it) or, where :func:`text_counts`, its normalised text. The table's rule, between two given splits."""
    mine, theirs = component_keys(split), component_keys(train)
    kinds = [k for k in KINDS if k != "text" or text_counts(modality, train_modality)]
    seen = {k: set(theirs[k]) - {None} for k in kinds}
    return np.array([any(mine[k][i] is not None and mine[k][i] in seen[k] for k in kinds) for i in range(len(split))],
                    dtype=bool)


def fingerprint(keys: list[str]) -> str:
    """Order-sensitive digest of a split's keys (identifies the raw split a table row was made for)."""
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:32]


# ----------------------------------------------------------------------------- computing the table

def table_of(specs: Iterable[TaskSpec], keys_of=None) -> dict:
    """The dedup table of a set of tasks (a suite), from their raw splits.

    ``keys_of(spec) -> {split: (example keys, component keys)}`` may be given (tests); by default the
    raw (not deduplicated) splits are loaded and hashed.
    """
    specs = list(specs)
    if keys_of is None:
        def keys_of(spec):
            data = load_raw_task_data(spec)
            return {s: (example_keys(data.split(s)), component_keys(data.split(s))) for s in SPLITS}
    modality = {spec.name: spec.modality for spec in specs}
    keys = {spec.name: keys_of(spec) for spec in sorted(specs, key=lambda s: s.name)}
    train = {name: {kind: set(k["train"][1][kind]) - {None} for kind in KINDS} for name, k in keys.items()}
    tasks = {}
    for name, k in keys.items():
        row = {"fingerprint": {s: fingerprint(k[s][0]) for s in k}, "sizes": {s: len(k[s][0]) for s in k},
               "removed": {}, "removed_count": {}, "by_kind": {}, "by_source": {}}
        others = [o for o in keys if o != name]
        by_source = {o: {s: 0 for s in EVAL_SPLITS} for o in others}
        for s in EVAL_SPLITS:
            example, comp = k[s]
            dup, kinds = set(), {kind: 0 for kind in KINDS}
            for i, key in enumerate(example):
                why, hit = None, []
                for o in others:
                    for kind in KINDS:
                        v = comp[kind][i]
                        if v is None or v not in train[o][kind]:
                            continue
                        if kind == "text" and not text_counts(modality[name], modality[o]):
                            continue  # a shared question template between two image tasks is no example
                        hit.append(o)
                        why = why or kind
                        break
                if hit:
                    dup.add(key)
                    kinds[why] += 1
                    for o in hit:
                        by_source[o][s] += 1
            row["removed"][s] = sorted(dup)
            row["removed_count"][s] = sum(key in dup for key in example)
            row["by_kind"][s] = kinds
        row["by_source"] = {o: n for o, n in by_source.items() if any(n.values())}
        tasks[name] = row
    return {"format": TABLE_FORMAT, "data_version": DATA_VERSION, "rule": RULE, "tasks": tasks}


def _cached_table_path() -> Path:
    return cache_dir() / "tasks" / f"v{DATA_VERSION}" / "_dedup_table.json"


def _read(path: Path) -> dict | None:
    try:
        t = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return t if isinstance(t, dict) and t.get("format") == TABLE_FORMAT and isinstance(t.get("tasks"), dict) else None


def tables_of(suite: Mapping[str, TaskSpec]) -> list[dict]:
    """The tables made for ``suite`` (this ``DATA_VERSION`` and exactly its tasks), the committed one
    first, then the cache's recomputation. A table of another task list (an older pitune, another
    checkout sharing the cache) is never read: its removals would be another suite's."""
    out = []
    for path in (TABLE_PATH, _cached_table_path()):
        t = _read(path)
        if t is not None and t.get("data_version") == DATA_VERSION and set(t["tasks"]) == set(suite):
            out.append(t)
    return out


def recompute_cached(suite: Mapping[str, TaskSpec]) -> dict:
    """``suite``'s table computed from all its tasks and cached under the data cache (once: under a lock)."""
    from filelock import FileLock

    path = _cached_table_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        print("pitune: the duplicate table does not match the task data; recomputing it from every task "
              "(once) ...", file=sys.stderr, flush=True)
        t = table_of(suite.values())
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(t))
        os.replace(tmp, path)
    return t


# ----------------------------------------------------------------------------- applying it

def is_member(spec: TaskSpec, suite: Mapping[str, TaskSpec]) -> bool:
    """Whether ``spec`` is the task of that name in ``suite`` (a user's task or a modified copy is not)."""
    return suite.get(spec.name) is spec


def apply_table(data: TaskData, suite: Mapping[str, TaskSpec]) -> TaskData:
    """The task's data with cross-task duplicates (against the other tasks of ``suite``) removed from val
    and test; a task outside ``suite`` is returned as it is."""
    if not is_member(data.spec, suite):
        return data
    keys = {s: example_keys(data.split(s)) for s in ("train", *EVAL_SPLITS)}
    prints = {s: fingerprint(keys[s]) for s in keys}

    def matches(row) -> bool:
        return row is not None and all(row["fingerprint"].get(s) == prints[s] for s in keys)

    row = next((t["tasks"][data.spec.name] for t in tables_of(suite) if matches(t["tasks"].get(data.spec.name))), None)
    if row is None:
        row = recompute_cached(suite)["tasks"].get(data.spec.name)
        if not matches(row):
            raise RuntimeError(f"{data.spec.name}: its data changed while the duplicate table was computed; retry")
    out = {"train": data.train}
    for s in EVAL_SPLITS:
        drop = set(row["removed"][s])
        keep = [i for i, k in enumerate(keys[s]) if k not in drop]
        out[s] = data.split(s) if len(keep) == len(keys[s]) else data.split(s).subset(keep)
    return TaskData(data.spec, out["train"], out["val"], out["test"])
