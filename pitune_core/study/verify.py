"""Check a study directory against its manifest (the read side; nothing here writes).

``pitune verify`` and the dashboard's study check call :func:`verify_study`; the pipeline writes the
manifest (:func:`pitune_core.study.manifest.write_manifest`).
"""

from __future__ import annotations

import json
from pathlib import Path

from pitune_core.common import sha256_file
from pitune_core.paths import StudyPaths


def verify_study(root: str | Path, load_experts: bool = True) -> list[str]:
    """Problems with a study directory (empty list: all good)."""
    root = Path(root)
    if not (StudyPaths(root).manifest).exists():
        return [f"{root}/manifest.json is missing: the study is incomplete. Rebuild it with "
                f"`pitune precompute --out {root}` (resumes where it stopped)."]
    try:
        manifest = json.loads((StudyPaths(root).manifest).read_text())
    except json.JSONDecodeError as e:
        return [f"{root}/manifest.json is not valid JSON ({e})"]
    problems = []
    for rel, digest in manifest.get("files", {}).items():
        p = root / rel
        if not p.exists():
            problems.append(f"missing: {rel}")
        elif sha256_file(p) != digest:
            problems.append(f"corrupt (sha256 mismatch): {rel}")
    if load_experts and not problems:
        from pitune_core.model.backbone import UnifiedBackbone
        from pitune_core.model.experts import ExpertError, load_expert

        try:
            bb = UnifiedBackbone.load(StudyPaths(root).backbone)
        except Exception as e:  # noqa: BLE001 - report, don't crash
            return problems + [f"backbone does not load: {e}"]
        for meta in sorted(StudyPaths(root).experts.rglob("pitune_expert.json")):
            try:
                load_expert(meta.parent, bb)
            except (ExpertError, Exception) as e:  # noqa: BLE001
                problems.append(f"expert {meta.parent.relative_to(root)} does not load: {e}")
    return problems


