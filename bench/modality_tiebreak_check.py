"""Does breaking the same-modality rule's ties with another predictor rank sources better? (exploratory)

    python bench/modality_tiebreak_check.py [--study precomputed] [--plan transfer-v2]

The ground truth's "Beyond modality" table (REPORT.md) shows that data-only and the source expert's
accuracy order sources *within* a modality at 4 shots, which the same-modality rule cannot (it
ties them). This check builds, from the logged predictor rows alone (no new runs), the row
``same_modality + 0.5 * rank01(other)`` for each logged (target, target data, seed) - same
modality first, the other predictor's order inside each block - and scores it exactly as the
quality stage scores every predictor (:func:`pitune_core.predict.quality.target_quality` against the
seed-averaged gains; per-target mean over seeds; paired difference to same-modality with a
bootstrap CI over targets). Exploratory: defined after the within-modality numbers were seen.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from scipy.stats import rankdata

from pitune_core.paths import SHIPPED_STUDY, StudyPaths
from pitune_core.predict.quality import paired_ci, target_quality
from pitune_core.study.read.reader import Study


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--study", default=str(SHIPPED_STUDY))
    ap.add_argument("--plan", default="transfer-v2")
    ap.add_argument("--others", nargs="+", default=["data", "expert_accuracy", "fisher"])
    args = ap.parse_args(argv)
    study = Study(args.study)
    targets, sources, G, info = study.groundtruth_gains(args.plan)
    from pitune_core.study.transfer import predictor_records

    d = StudyPaths(args.study).groundtruth(args.plan)
    key = json.loads((d / "quality.json").read_text()).get("predictor_key")  # the rows the quality stage scored
    rows = defaultdict(dict)
    for r in predictor_records(d, key)[0]:
        rows[(r["target"], r["shots"], r["seed"])][r["predictor"]] = r
    print(f"ground truth {args.plan}: mean over {len(info['seeds'])} seeds; rows of predictor key {key}")
    print(f"{'target data':11s} {'predictor':40s} {'Spearman':>8s} | vs same-modality [95% CI]")
    for size in sorted({k[1] for k in rows}, key=lambda s: (s is None, s or 0)):
        per: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for (t, shots, _seed), preds in rows.items():
            if shots != size or "same_modality" not in preds or t not in targets:
                continue
            src = preds["same_modality"]["sources"]
            g = np.array([G[targets.index(t), sources.index(s)] for s in src])
            sm = np.array(preds["same_modality"]["row"], dtype=float)
            per["same_modality"][t].append(target_quality(sm, g, src)["spearman"])
            for o in args.others:
                if o in preds and preds[o]["sources"] == src:
                    other = np.array(preds[o]["row"], dtype=float)
                    row = sm + 0.5 * (rankdata(other) - 1) / len(other)
                    per[f"same_modality, ties by {o}"][t].append(target_quality(row, g, src)["spearman"])
        base = {t: float(np.mean(v)) for t, v in per["same_modality"].items()}
        label = "full" if size is None else f"{size}-shot"
        for name, pt in per.items():
            v = {t: float(np.mean(x)) for t, x in pt.items()}
            ts = sorted(set(v) & set(base))
            lo, hi = paired_ci([v[t] for t in ts], [base[t] for t in ts], "difference")
            d = float(np.mean([v[t] - base[t] for t in ts]))
            print(f"{label:11s} {name:40s} {np.mean(list(v.values())):8.3f} | "
                  + ("–" if name == "same_modality" else f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
