"""Which tasks may be targets of a measurement: the rule that drops targets at chance or at ceiling.

A target where every approach scores the same says nothing about transfer: one at chance (nothing was
learnable from its data) or one at ceiling (everything is). The rule was written and committed before
the first study of the family suite trained its experts (issue 27), and every plan of that suite takes
its targets through it:

- **at chance**: the task's full-data LoRA expert is not admitted by the library's gate
  (:func:`pitune_core.common.admission`: its validation score does not beat max(zero-shot, majority)
  by 5 points);
- **at ceiling**: its full-data LoRA expert scores ≥ ``CEILING`` on test, or the backbone's zero-shot
  score does (nothing is left for a source to add).

Reads the study's ``experts/summary.csv`` only; torch-free.
"""

from __future__ import annotations

import csv
from pathlib import Path

#: at or above this test score (headline metric, fraction) a task is at ceiling
CEILING = 0.97


def target_rule(rows: list[dict]) -> tuple[list[str], dict[str, str]]:
    """``(targets kept, {task: why dropped})`` from LoRA rows of ``experts/summary.csv`` (in order)."""
    kept, dropped = [], {}
    for r in rows:
        if r.get("method", "lora") != "lora":
            continue
        t = r["task"]
        expert, zs = float(r["expert"]), float(r["zero_shot"])
        if str(r.get("admitted", "1")).strip() == "0":
            dropped[t] = f"at chance: {r.get('gate') or 'not admitted by the gate'}"
        elif max(expert, zs) >= CEILING:
            which = "its full-data expert" if expert >= zs else "zero-shot"
            dropped[t] = f"at ceiling: {which} scores {100 * max(expert, zs):.1f} >= {100 * CEILING:.0f} on test"
        else:
            kept.append(t)
    return kept, dropped


def study_targets(summary_csv: str | Path) -> tuple[list[str], dict[str, str]]:
    """:func:`target_rule` on a study's ``experts/summary.csv``."""
    with open(summary_csv, newline="", encoding="utf-8") as f:
        return target_rule(list(csv.DictReader(f)))
