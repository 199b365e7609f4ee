"""Do ground-truth pairs made on a GPU reproduce on CPU? Re-runs logged pairs here and compares.

    python bench/device_reproducibility.py [--study precomputed] [--plan plans/transfer-v2.json]
                                           [--pairs mnist:5:scratch,sklearn_digits ...] [--out FILE]

``pairs.jsonl`` rows say where each pair ran (``device``); this re-runs the chosen (target, seed,
sources) cells with :func:`pitune_core.study.transfer.few_shot_score` on this machine's device and
prints the logged score beside the new one. Same code, same seed, same sample: any difference is
the device's arithmetic (and, here, torch 2.11+cu130 on the GPU vs 2.13 on CPU).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pitune_core.model.backbone import UnifiedBackbone  # noqa: E402
from pitune_core.model.device import describe_device  # noqa: E402
from pitune_core.paths import SHIPPED_STUDY, StudyPaths  # noqa: E402
from pitune_core.study.transfer import few_shot_score, load_plan, read_jsonl  # noqa: E402

DEFAULT = ["mnist:5:scratch,sklearn_digits,opencv_digits,fashion_mnist,emoji_group,movie_sentiment",
           "tweet_sentiment:6:scratch,movie_sentiment,rt_polarity,mnist"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--study", default=str(SHIPPED_STUDY))
    ap.add_argument("--plan", default="plans/transfer-v2.json")
    ap.add_argument("--pairs", nargs="*", default=DEFAULT, help="TARGET:SEED:SOURCE,SOURCE,... (scratch = no source)")
    ap.add_argument("--out", help="write the comparison as JSON here")
    args = ap.parse_args()
    plan = load_plan(args.plan)
    gt = StudyPaths(args.study).groundtruth(plan.name) / "pairs.jsonl"
    logged = {(r["target"], r["source"], int(r["seed"])): r for r in read_jsonl(gt)}
    bb = UnifiedBackbone.load(StudyPaths(args.study).backbone)
    here = describe_device(bb.device)
    rows = []
    for spec in args.pairs:
        target, seed, sources = spec.split(":")
        for s in sources.split(","):
            old = logged.get((target, s, int(seed)))
            if old is None:
                raise SystemExit(f"{target} <- {s} (seed {seed}) is not in {gt}")
            t0 = time.perf_counter()
            init = None if s == "scratch" else StudyPaths(args.study).experts_of(plan.method) / s
            new = few_shot_score(target, plan.method, bb, plan.budget, int(seed), init)
            rows.append({"target": target, "source": s, "seed": int(seed), "logged": old["score"],
                         "logged_on": old.get("device", "cpu (before devices were logged)"), "rerun": new,
                         "rerun_on": here, "seconds": round(time.perf_counter() - t0, 1)})
            print(f"{target:18s} <- {s:18s} seed {seed}: logged {old['score']:.4f} ({rows[-1]['logged_on']}), "
                  f"here {new:.4f} ({here})", flush=True)
    same = sum(r["logged"] == r["rerun"] for r in rows)
    print(f"{same} of {len(rows)} identical; largest difference {max(abs(r['logged'] - r['rerun']) for r in rows):.4f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows, "identical": same, "n": len(rows)}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
