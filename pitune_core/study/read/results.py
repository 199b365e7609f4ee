"""The study's result tables, each with one writer and one reader (torch-free, so the dashboard and
the report read them without loading a model):

- ``results.csv`` of a comparison — written by ``pitune compare`` and the study's compare stage. The
  approach column was called ``method`` in studies made before the layout change; the reader accepts
  both.
- ``transfer_matrix.csv`` — measured gain (accuracy points) of every target (row) from every source
  (column), empty where not measured.
- ``robustness.csv`` of a pre-registered comparison (``protocol/<plan>/``, beside its ``results.csv``;
  issue 28, item 3) — one row per done run and evaluation set: the scores of the run's tuned model,
  with no further training, on its own test set, the shifted test sets of its family and corrupted
  copies of its test set (:mod:`pitune_core.tune.robustness`'s rows, keyed by the run). Written by
  :func:`pitune_core.study.protocol.write_results` only once some run carries robustness rows, so a
  study without them has no such file and reads as before.
"""

from __future__ import annotations

import csv
import math
import os
import re
from pathlib import Path
from typing import Any

from pitune_core.common import check_task_name, printable
from pitune_core.spec.vocab import CORRUPTIONS, ROBUSTNESS_SETS, SEVERITIES

#: columns of a results.csv row
RESULT_FIELDS = ("target", "approach", "shots", "seed", "accuracy", "score", "metric", "sources")


def csv_rows(path: Path, shown: str, max_bytes: int, required, what: str):
    """Rows of a CSV read from a study (untrusted), each with ``where`` ("FILE line N") for its errors:
    a regular file (no symlink) of at most ``max_bytes`` with every ``required`` column, no row with more
    cells than columns, readable as UTF-8 CSV; a one-line ``ValueError`` naming ``shown`` otherwise
    (``what``: the file's kind, e.g. "results.csv")."""
    if path.is_symlink() or not path.is_file():
        raise ValueError(f"{shown} is not a regular file")
    size = path.stat().st_size
    if size > max_bytes:
        raise ValueError(f"{shown} has {size} bytes, more than the {max_bytes} a {what} may have")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            lacking = [c for c in required if c not in (reader.fieldnames or [])]
            if lacking:
                raise ValueError(f"{shown} lacks the column(s) {', '.join(lacking)} (is it a protocol {what}?)")
            for r in reader:
                where = f"{shown} line {reader.line_num}"
                if None in r:
                    raise ValueError(f"{where}: more cells than columns")
                yield where, r
    except (csv.Error, UnicodeDecodeError) as e:
        raise ValueError(f"{shown} is not a readable CSV: {e}") from None


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


# ----------------------------------------------------------------------------- robustness.csv (protocol)

ROBUSTNESS_FILE = "robustness.csv"
#: the run a row belongs to (as in results.csv), then a robustness row's fields
#: (:data:`pitune_core.tune.robustness.ROW_FIELDS`, which tests/test_robustness_view.py holds this to)
RUN_FIELDS = ("key", "target", "approach", "shots", "seed")
ROBUSTNESS_COLUMNS = (*RUN_FIELDS, "set", "source", "corruption", "severity", "metric", "value", "accuracy", "n",
                      "dropped", "note")
MAX_ROBUSTNESS_BYTES = 64 << 20  # ~20 rows a run, ~1,500 runs: a few MB; anything far larger is not ours
MAX_NOTE_CHARS = 300


def robustness_rows(runs: list[dict]) -> list[dict]:
    """The robustness.csv rows of a comparison's runs (dicts with :data:`RUN_FIELDS` and, where scored,
    ``robustness``: the run's list of robustness rows); a run without them adds none."""
    out = []
    for r in runs:
        for x in r.get("robustness") or []:
            out.append({**x, **{k: r[k] for k in RUN_FIELDS}, "shots": "full" if r["shots"] is None else r["shots"]})
    return out


def write_robustness(path: str | os.PathLike, rows: list[dict]) -> None:
    """Write rows (from :func:`robustness_rows`) as robustness.csv (fields beyond the columns are dropped)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(ROBUSTNESS_COLUMNS), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def _count(v: str | None, where: str, what: str) -> int:
    v = (v or "").strip()
    if not v.isdigit():
        raise ValueError(f"{where}: {what} {v[:40]!r} is not a non-negative integer")
    return int(v)


def _unit(v: str | None, where: str, what: str, required: bool) -> float | None:
    """A score cell: a number in [0, 1], or empty (None) where allowed."""
    if not (v or "").strip() and not required:
        return None
    f = parse_float(v)
    if f is None or not 0.0 <= f <= 1.0:
        raise ValueError(f"{where}: {what} must be a number between 0 and 1, got {(v or '')[:40]!r}")
    return f


def read_robustness(path: str | os.PathLike, runs: list[dict], shown: str | None = None) -> list[dict]:
    """Parse and validate a protocol ``robustness.csv`` (untrusted: bounded size, its columns, known
    sets and corruptions, severities and counts as ints, scores in [0, 1], a note of one printable line)
    against the comparison's parsed results rows ``runs``
    (:func:`pitune_core.study.read.evidence.read_protocol_csv`): every row must belong to a done run
    of results.csv with the same key, and every run it scores has exactly one in-distribution row.
    Returns rows with the run's fields (shots an int or ``"full"``, seed an int), ``set``, ``source``
    and ``corruption`` (None where empty), ``severity``, ``value``, ``accuracy``, ``n``, ``dropped``,
    ``metric`` and ``note``; a one-line ``ValueError`` naming the file (``shown``) and line otherwise."""
    path = Path(path)
    shown = shown or str(path)
    done = {(r["target"], r["approach"], r["shots"], r["seed"]): r for r in runs if r.get("status") == "done"}
    rows, in_dist = [], {}
    for where, r in csv_rows(path, shown, MAX_ROBUSTNESS_BYTES, ROBUSTNESS_COLUMNS, "robustness.csv"):
        shots_s = (r.get("shots") or "").strip()
        ident = ((r.get("target") or "")[:64], (r.get("approach") or "")[:64],
                 "full" if shots_s == "full" else int(shots_s) if shots_s.isdigit() else shots_s[:40],
                 int(s) if (s := (r.get("seed") or "").strip()).isdigit() else s[:40])
        run = done.get(ident)
        if run is None:
            raise ValueError(f"{where}: no done run {' '.join(map(str, ident))!r} in results.csv")
        if (r.get("key") or "") != run["key"]:
            raise ValueError(f"{where}: its key differs from results.csv's for that run (a row of another run)")
        kind = r.get("set") or ""
        if kind not in ROBUSTNESS_SETS:
            raise ValueError(f"{where}: set {kind[:40]!r} is not one of {', '.join(ROBUSTNESS_SETS)}")
        source = r.get("source") or None
        if source is not None:
            try:
                check_task_name(source, "the shift source")
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
        corruption = r.get("corruption") or None
        if corruption is not None and corruption not in CORRUPTIONS:
            raise ValueError(f"{where}: corruption {corruption[:40]!r} is not one of {', '.join(CORRUPTIONS)}")
        severity = None if not (r.get("severity") or "").strip() else _count(r["severity"], where, "severity")
        if severity is not None and severity not in SEVERITIES:
            raise ValueError(f"{where}: severity {severity} is not one of {', '.join(map(str, SEVERITIES))}")
        if (kind == "corrupted") != (corruption is not None and severity is not None):
            raise ValueError(f"{where}: a corruption and its severity are given on the corrupted rows only")
        note = printable(r.get("note") or "")[:MAX_NOTE_CHARS] or None
        n = _count(r.get("n"), where, "n")
        # only a shifted set may have no score: none exists for the target (a note says why) or it is empty
        value = _unit(r.get("value"), where, "value", required=kind != "shifted" or (note is None and n > 0))
        rows.append({**{k: run[k] for k in RUN_FIELDS}, "set": kind, "source": source, "corruption": corruption,
                     "severity": severity, "metric": printable(r.get("metric") or "")[:40], "value": value,
                     "accuracy": _unit(r.get("accuracy"), where, "accuracy", required=False), "n": n,
                     "dropped": _count(r.get("dropped") or "0", where, "dropped"), "note": note})
        in_dist[ident] = in_dist.get(ident, 0) + (kind == ROBUSTNESS_SETS[0])
    bad = next((i for i, c in in_dist.items() if c != 1), None)
    if bad is not None:
        raise ValueError(f"{shown}: run {' '.join(map(str, bad))} has {in_dist[bad]} in-distribution rows, not 1")
    return rows
