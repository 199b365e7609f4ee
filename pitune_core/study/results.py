"""The results.csv row of a comparison: one writer, one reader (torch-free).

Rows are written by ``pitune compare`` and the study's compare stage, read by the report and the
dashboard. The approach column was called ``method`` in studies made before the layout change; the
reader accepts both.
"""

from __future__ import annotations

import csv
import math
import os
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


def _float(v: Any) -> float | None:
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
                         "shots": shots_v, "seed": r.get("seed"), "accuracy": _float(r.get("accuracy")),
                         "score": _float(r.get("score")), "metric": r.get("metric"),
                         "sources": [s for s in (r.get("sources") or "").split("|") if s]})
    return rows
