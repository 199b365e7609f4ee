"""A copy of the shipped study without its measurements, for tests that write synthetic ones.

The dashboard tests that plant a known ground truth or protocol result need a study whose own
``groundtruth/``, ``protocol/`` and predictor graphs (``predict/*/predictor-*``) are absent, or the
shipped evidence would mix with the synthetic one. The copy's manifest drops those files, so the
copy verifies like a study built with ``--groundtruth-plan none --protocol-plan none``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

MEASUREMENTS = ("groundtruth/", "protocol/")


def _measured(rel: str) -> bool:
    parts = rel.split("/")
    return rel.startswith(MEASUREMENTS) or (len(parts) > 2 and parts[0] == "predict" and parts[2].startswith("predictor-"))


def copy_without_measurements(src: Path, dst: Path) -> Path:
    """Copy study ``src`` to ``dst`` minus its ground truth, protocol runs and predictor graphs."""
    shutil.copytree(src, dst, symlinks=True)
    for d in [dst / "groundtruth", dst / "protocol", *dst.glob("predict/*/predictor-*")]:
        shutil.rmtree(d, ignore_errors=True)
    man_p = dst / "manifest.json"
    man = json.loads(man_p.read_text())
    man["files"] = {k: v for k, v in man["files"].items() if not _measured(k)}
    man_p.write_text(json.dumps(man, indent=1))
    return dst
