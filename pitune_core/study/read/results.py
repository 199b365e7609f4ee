"""The study's result tables, each with one writer and one reader (torch-free, so the dashboard and
the report read them without loading a model):

- ``results.csv`` of a comparison — written by ``pitune compare`` and the study's compare stage. The
  approach column was called ``method`` in studies made before the layout change; the reader accepts
  both.
- ``transfer_matrix.csv`` — measured gain (accuracy points) of every target (row) from every source
  (column), empty where not measured.
"""

from __future__ import annotations

import csv
import math
import os
import re
from typing import Any

#: columns of a results.csv row
RESULT_FIELDS = ("target", "approach", "shots", "seed", "accuracy", "score", "metric", "sources")


def result_row(r: dict) -> dict:
    """The results.csv row of one approach's result (``run_method``'s dict)."""
    return {"target": r["target"], "approach": r["approach"], "shots": "full" if r["shots"] is None else r["shots"],
            "seed": r["seed"], "accuracy": round(r["accuracy"], 4), "score": round(r["score"], 4),
            "metric": r["metric"], "sources": "|".join(r.get("sources", []))}


def write_results(path: str | os.PathLike, rows: list[dict]) -> None:
    """Write rows (from :func:`result_row`) as results.csv."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(RESULT_FIELDS))
        w.writeheader()
        w.writerows(rows)


def parse_float(v: Any) -> float | None:
    """A CSV cell as a finite float, or None (empty, not a number, NaN or inf)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def read_results(path: str | os.PathLike) -> list[dict]:
    """Parsed rows: shots an int or ``"full"``, accuracy/score floats (None when missing), sources a list."""
    rows = []
    with open(path, newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            shots = r.get("shots", "")
            try:
                shots_v: int | str = int(shots)
            except (TypeError, ValueError):
                shots_v = "full"
            rows.append({"target": r.get("target"), "approach": r.get("approach") or r.get("method"),
                         "shots": shots_v, "seed": r.get("seed"), "accuracy": parse_float(r.get("accuracy")),
                         "score": parse_float(r.get("score")), "metric": r.get("metric"),
                         "sources": [s for s in (r.get("sources") or "").split("|") if s]})
    return rows


_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def write_matrix_csv(path: str | os.PathLike, tasks: list[str], M) -> None:
    """Rows = targets, columns = sources (the same task order), ``""`` for NaN."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["target", *tasks])
        for t, row in zip(tasks, M):
            w.writerow([t, *["" if not math.isfinite(float(v)) else f"{float(v):.4f}" for v in row]])


def read_matrix_csv(path: str | os.PathLike):
    """``(targets, sources, M)`` with NaN where not measured; task names must be identifiers."""
    import numpy as np

    with open(path, newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.reader(fh) if r]
    if not rows or rows[0][0] != "target":
        raise ValueError(f"{path}: expected a header starting with 'target'")
    cols = rows[0][1:]
    targets = [r[0] for r in rows[1:]]
    for n in (*cols, *targets):
        if not _NAME.match(n):
            raise ValueError(f"{path}: {n[:80]!r} is not a task identifier")
    if any(len(r) != len(cols) + 1 for r in rows[1:]):
        raise ValueError(f"{path}: every row needs one value per source ({len(cols)})")
    M = np.array([[v if (v := parse_float(x)) is not None else np.nan for x in r[1:]] for r in rows[1:]],
                 dtype=float).reshape(len(targets), len(cols))
    return targets, cols, M
