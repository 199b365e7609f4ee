"""A study's record of its tasks (``tasks.json``), read where the registry may no longer know a task."""

from __future__ import annotations

import json
from pathlib import Path

from pitune_core.data.tasks import get_task


def task_modalities(tasks_json: Path, names: list[str]) -> dict[str, str]:
    """Each task's modality: from a study's ``tasks.json`` where it names the task (an older study keeps
    tasks the registry has retired since), else from the registry (an unknown name raises its error)."""

    known: dict[str, str] = {}
    if Path(tasks_json).is_file():
        try:
            known = {t["name"]: t["modality"] for t in json.loads(Path(tasks_json).read_text())
                     if isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("modality"), str)}
        except ValueError:
            known = {}
    return {n: known[n] if n in known else get_task(n).modality for n in names}
