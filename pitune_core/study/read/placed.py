"""User tasks placed on a study, as its readers see them: the placement records in the user task
store, merged into a study's similarities, layout and task list (numpy only, no torch).

:mod:`pitune_core.study.place` writes these records (``TASK/placed/<study id>/<method>-<embedding>/
placement.json``, beside the study, never in it); the dashboard's reader, ``top-k`` and ``transfer``
read them through this module, so the read side never imports the code that trains a placement.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np

from pitune_core.common import read_regular
from pitune_core.data.user_tasks import PLACED_DIR, UserTaskError, find_user_task, task_dir, user_task_names
from pitune_core.paths import SOURCE_SIDE_DIR, StudyPaths
from pitune_core.spec.vocab import PREDICTOR_PREFIX
from pitune_core.study.verify import read_manifest

PLACEMENT_FORMAT = "pitune-placement/1"
PLACEMENT_FILE = "placement.json"
EMBEDDING_FILE = "embedding.safetensors"
PLACEABLE = ("fisher",)  # the embedding π-Tuning predicts with; what a placed task is compared by

# ----------------------------------------------------------------------------- where

_ID_CACHE: dict[tuple, str] = {}


#: the parts of a study a placement depends on (the projector, the experts, their embeddings and graphs);
#: a study that only grows elsewhere (protocol runs, ground truth, reports) keeps its identity
PLACEMENT_INPUTS = ("backbone/", "experts/", "predict/")


def study_id(study: str | os.PathLike) -> str:
    """A study's identity for placements: sha256 over the manifest's checksums of the files a placement
    depends on (:data:`PLACEMENT_INPUTS`, predictor graphs excluded), so a rebuilt study is a new one
    while a study whose protocol runs are still being appended is not; the path's hash without a
    readable manifest."""
    root = Path(study).expanduser().resolve()
    man = StudyPaths(root).manifest
    try:
        st = man.stat()
        key = (str(man), st.st_mtime_ns, st.st_size)
        if key not in _ID_CACHE:
            files = read_manifest(root)["files"]  # bounded, regular files only: a FIFO or /dev/zero is refused
            h = hashlib.sha256()
            for path, digest in sorted(files.items()):
                if isinstance(path, str) and path.startswith(PLACEMENT_INPUTS) and "/predictor-" not in path \
                        and f"/{SOURCE_SIDE_DIR}/" not in path:  # rows a growing ground truth adds: derived
                    h.update(f"{path}\0{digest}\n".encode())
            _ID_CACHE[key] = h.hexdigest()[:16]
    except (OSError, ValueError, AttributeError):
        return "path-" + hashlib.sha256(str(root).encode()).hexdigest()[:16]
    return _ID_CACHE[key]


#: largest placement.json read (one similarity per study task: ~100 KB on a 1,000-task hub)
MAX_PLACEMENT_BYTES = 16 << 20


def read_placement(f: str | os.PathLike) -> dict:
    """A placement record, read bounded from a regular file (a FIFO or device in the store is refused,
    never waited on); ``ValueError`` / ``OSError`` when it is not a readable JSON object."""
    try:
        rec = json.loads(read_regular(f, MAX_PLACEMENT_BYTES).decode("utf-8"))
    except RecursionError:
        raise ValueError(f"{f} is nested too deeply") from None
    if not isinstance(rec, dict):
        raise ValueError(f"{f} is not a JSON object")
    return rec


def placement_dir(task: str, study: str | os.PathLike, method: str, embedding: str) -> Path:
    return task_dir(task) / PLACED_DIR / study_id(study) / f"{method}-{embedding}"


def placed_on(study: str | os.PathLike, task: str, method: str) -> list[str]:
    """The embeddings and graphs a placed user task is drawn on, for this study and expert type."""
    base = task_dir(task) / PLACED_DIR / study_id(study)
    return sorted(d.name[len(method) + 1:] for d in base.glob(f"{method}-*") if (d / PLACEMENT_FILE).is_file())


# ----------------------------------------------------------------------------- reading (no torch)

def _valid(rec, names: list[str]) -> bool:
    sims = rec.get("similarities") if isinstance(rec, dict) else None
    if rec.get("format") != PLACEMENT_FORMAT or not isinstance(sims, dict) or set(sims) != set(names):
        return False
    return all(isinstance(v, (int, float)) and math.isfinite(v) and -1e-9 <= v <= 1 + 1e-9 for v in sims.values())


def placements(study: str | os.PathLike, method: str, embedding: str, names: list[str] | None = None) -> list[dict]:
    """The placement records of user tasks on this study (same study id) for one expert type and
    embedding; with ``names`` (the study's similarity rows) only those that match them."""
    out = []
    if embedding not in PLACEABLE and not embedding.startswith(PREDICTOR_PREFIX):
        return out
    sid = study_id(study)
    for task in user_task_names():
        f = task_dir(task) / PLACED_DIR / sid / f"{method}-{embedding}" / PLACEMENT_FILE
        if not f.is_file():
            continue
        try:
            rec = read_placement(f)
        except (OSError, ValueError):
            continue
        if rec.get("task") != task or (names is not None and not _valid(rec, names)):
            continue
        out.append(rec)
    return out


def placed_stamp(study: str | os.PathLike) -> int:
    """Changes whenever a task is placed on (or removed from) this study: for the dashboard's caches."""
    sid = study_id(study)
    h = 0
    for task in user_task_names():
        for f in (task_dir(task) / PLACED_DIR / sid).glob(f"*/{PLACEMENT_FILE}"):
            try:
                h = hash((h, str(f), f.stat().st_mtime_ns))
            except OSError:
                pass
    return h


def merge_similarity(study, method: str, embedding: str, names: list[str], S: np.ndarray,
                     only: set[str] | None = None):
    """``(names, S)`` with a row and column per placed user task (or just those in ``only``) appended.

    Placed tasks are compared with the study's tasks only: between two user tasks the entry is 0
    (not measured), so neither is ever the other's neighbour.
    """
    recs = [r for r in placements(study, method, embedding, list(names))
            if r["task"] not in names and (only is None or r["task"] in only)]
    if not recs:
        return list(names), S
    n, m = len(names), len(recs)
    out = np.zeros((n + m, n + m), dtype=np.float64)
    out[:n, :n] = S
    for i, r in enumerate(recs):
        v = np.array([float(r["similarities"][t]) for t in names])
        out[n + i, :n] = v
        out[:n, n + i] = v
        out[n + i, n + i] = 1.0
    return list(names) + [r["task"] for r in recs], out


def merge_layout(study, method: str, embedding: str, names: list[str], coords: np.ndarray, note: str):
    """Layout ``(names, coords, note)`` with the placed user tasks' transformed positions appended."""
    recs = [r for r in placements(study, method, embedding, list(names))
            if r["task"] not in names and isinstance(r.get("position"), list) and len(r["position"]) == 2]
    if not recs:
        return names, coords, note
    xy = np.array([[float(r["position"][0]), float(r["position"][1])] for r in recs])
    if not np.isfinite(xy).all():
        return names, coords, note
    extra = (f" · {len(recs)} user task(s) transformed into this layout (weighted mean of their nearest "
             f"tasks' positions; the layout itself is not recomputed)")
    return list(names) + [r["task"] for r in recs], np.vstack([coords, xy]), (note or "") + extra


def placed_task_infos(study, method: str | None = None) -> list[dict]:
    """``tasks.json``-like rows for every user task placed on this study (any expert type/embedding)."""
    sid = study_id(study)
    out = []
    for task in user_task_names():
        base = task_dir(task) / PLACED_DIR / sid
        recs = sorted(base.glob(f"{method or '*'}-*/{PLACEMENT_FILE}")) if base.is_dir() else []
        if not recs:
            continue
        try:
            spec = find_user_task(task)
            loaded = [read_placement(p) for p in recs]  # bounded, regular files only
        except (UserTaskError, OSError, ValueError):
            continue
        if spec is None:
            continue
        loaded = [r for r in loaded if isinstance(r, dict)]
        rec = next((r for r in loaded if isinstance(r.get("expert"), dict)), loaded[0] if loaded else {})
        info = spec.info()
        info.update(num_train=rec.get("num_train"), num_test=rec.get("num_test"), user_task=True,
                    max_shots=rec.get("max_shots"),
                    placed_scores={r.get("method"): placed_scores(r, spec.metric) for r in loaded
                                   if isinstance(r.get("expert"), dict) and r.get("method")})
        out.append(info)
    return out


def placed_scores(rec: dict, metric: str) -> dict:
    """A placement's measured test scores in the task's ``metric`` (0..1, None where the record has
    none: placements before these were recorded, or a malformed file): its own expert, the bare
    backbone (zero-shot) and the majority class, as the study's expert summary has them."""
    def pick(d):
        v = d.get(metric) if isinstance(d, dict) else None
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) \
            and 0.0 <= v <= 1.0 else None

    e = rec.get("expert") or {}
    return {"expert": pick(e.get("test")), "zero_shot": pick(e.get("zero_shot")), "majority": pick(e.get("majority")),
            "metric": metric, "steps": e.get("steps") if isinstance(e.get("steps"), int) else None}
