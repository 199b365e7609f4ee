"""The stage cache of ``pitune precompute``: which stages finished, with the checksums of their files."""

from __future__ import annotations

import json
from pathlib import Path

from pitune_core.common import sha256_file


def _files(root: Path, sub: str | Path) -> list[Path]:
    p = root / sub
    if p.is_file():
        return [p]
    return sorted(x for x in p.rglob("*") if x.is_file() and not x.name.startswith(".")) if p.exists() else []


class Stages:
    """Records which stages finished, with the checksums of what they wrote."""

    def __init__(self, root: Path):
        self.root = root
        self.dir = root / ".stages"
        self.dir.mkdir(parents=True, exist_ok=True)

    def done(self, name: str, plan_hash: str) -> bool:
        """True when the stage ran with the same inputs and every file it wrote still verifies."""
        f = self.dir / f"{name}.json"
        if not f.exists():
            return False
        rec = json.loads(f.read_text())
        if rec.get("plan") != plan_hash:
            return False
        return all((self.root / p).exists() and sha256_file(self.root / p) == h for p, h in rec["files"].items())

    def finish(self, name: str, plan_hash: str, subs: list[str], seconds: float) -> None:
        files = {str(p.relative_to(self.root)): sha256_file(p) for s in subs for p in _files(self.root, s)}
        (self.dir / f"{name}.json").write_text(json.dumps({"plan": plan_hash, "files": files, "seconds": seconds}))

    def seconds(self, name: str) -> float | None:
        f = self.dir / f"{name}.json"
        return json.loads(f.read_text()).get("seconds") if f.exists() else None
