"""One target side per comparison cell, shared by the approaches that need it.

Why: in a comparison, every approach that selects sources (12 of the 17; ``own_expert_first`` in
:data:`pitune_core.spec.vocab.APPROACH_RECORDS`) starts from the same target side for a (target, shots,
seed): the own expert trained on the run's data for the same steps from the same seed, its Fisher, and the
ranking of the same sources (:func:`pitune_core.tune.baselines.target_side`). That side was about 40 % of a
π-Tuning run's CPU time and was computed again for each approach. It is deterministic (every stage seeds
itself), so computing it once per cell and reusing it leaves each run's result unchanged
(``tests/test_approaches.py`` runs approaches with and without the cache and compares their rows). Every run
still reports the selection's cost the same way: its steps (``steps.select``) and the seconds the side took
when it was built (``select_time_s``; ``time_s`` includes them, whether the side was built or reused).

A side is stored under a key of everything it depends on (the caller's context, e.g. the protocol's digest of
backbone, source experts, embeddings and data, plus the run's training examples themselves, target, shots,
seed, steps, expert type, adapter settings, Fisher sample and the source names); a folder holds
``side.json`` and the own expert in peft's format. Writers build in a temporary folder and rename it into place under a file lock, so shards share a
cache safely. The folder is a cache: deleting it costs only time.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from filelock import FileLock

from pitune_core.tune.baselines import Recipe, Sources, TargetSide, target_side

SIDE_FILE = "side.json"
#: bumped when what a cached side holds (or how it is computed) changes
SIDE_FORMAT = "pitune-target-side/1"


@dataclass(frozen=True)
class SideCache:
    """Where target sides are kept (``folder``) and what else they depend on (``context``: a string that
    changes whenever the backbone, the source experts, their embeddings or the data change)."""

    folder: Path
    context: str

    def key(self, target: str, sources: Sources, backbone_id: str, method: str, shots: int | None, seed: int,
            own_steps: int, recipe: Recipe, data: str = "") -> str:
        """The side's key; ``data``: a digest of the run's training examples (:func:`data_digest`)."""
        blob = json.dumps({"format": SIDE_FORMAT, "context": self.context, "data": data, "target": target, "shots": shots,
                           "seed": seed, "own_steps": own_steps, "method": method, "backbone_id": backbone_id,
                           "overrides": sources.method_overrides(), "fisher_max": recipe.fisher_max,
                           "sources": sorted(sources.expert_dirs), "gated": sorted(sources.gated)},
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def get(self, target: str, sources: Sources, backbone, method: str, shots: int | None, seed: int,
            own_steps: int, recipe: Recipe, examples) -> tuple[TargetSide, float, bool]:
        """``(side, seconds it took to build, reused)``: the cell's target side, built (and kept) when it
        is not here yet. Same arguments as :func:`pitune_core.tune.baselines.target_side`, plus the run's
        training examples (``examples``, :func:`pitune_core.tune.baselines.run_data`'s), which are in the key."""
        key = self.key(target, sources, backbone.backbone_id, method, shots, seed, own_steps, recipe,
                       data_digest(examples))
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.folder / key
        with FileLock(str(self.folder / f"{key}.lock")):
            hit = _load(final)
            if hit is not None:
                return hit[0], hit[1], True
            tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=self.folder))
            try:
                t0 = time.time()
                side = target_side(target, sources, backbone, method, shots, seed, own_steps, tmp, recipe)
                took = round(time.time() - t0, 2)
                rel = Path(side.own_dir).relative_to(tmp).as_posix()
                (tmp / SIDE_FILE).write_text(json.dumps({
                    "format": SIDE_FORMAT, "own": rel, "own_steps": side.own_steps,
                    "ranking": [[n, s] for n, s in side.ranking], "selection": side.selection,
                    "num_train": side.num_train, "time_s": took}, indent=1), encoding="utf-8")
                if final.exists():  # a folder without a readable side.json (a killed writer's): replace it
                    shutil.rmtree(final)
                os.replace(tmp, final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return replace(side, own_dir=str(final / rel)), took, False


def data_digest(tensors) -> str:
    """sha256 of a run's training examples (texts, image features, labels: a
    :class:`pitune_core.model.backbone.TaskTensors`), so a side is never reused for other examples."""
    h = hashlib.sha256()
    for t in tensors.texts or ():
        h.update(str(t).encode("utf-8", "surrogatepass") + b"\0")
    if tensors.visual is not None:
        h.update(tensors.visual.detach().cpu().contiguous().numpy().tobytes())
    h.update(tensors.labels.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _load(folder: Path) -> tuple[TargetSide, float] | None:
    """A stored side, or None when there is none (or it is incomplete or of another format)."""
    try:
        raw = json.loads((folder / SIDE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict) or raw.get("format") != SIDE_FORMAT:
        return None
    try:
        own = folder / str(raw["own"])
        side = TargetSide(str(own), int(raw["own_steps"]), [(str(n), float(s)) for n, s in raw["ranking"]],
                          str(raw["selection"]), int(raw["num_train"]))
        took = float(raw["time_s"])
    except (KeyError, TypeError, ValueError):  # a damaged file: rebuilt, never half-read
        return None
    if not own.is_dir() or folder.resolve() not in own.resolve().parents:  # the own expert stays inside
        return None
    return side, took
