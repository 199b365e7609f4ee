"""Does the batched Fisher pick the same sources as the loop did? Checked on the study's own logged runs.

    python bench/fisher_selection_check.py [--study precomputed] [--plan few-shot-v2] [--cases 12]

The pre-registered few-shot study ranks each run's sources by the Fisher of the target's own expert
on the run's shots (:func:`pitune_core.tune.baselines.target_side`). Its first runs computed that
Fisher with the one-example loop; later runs with batched per-example gradients
(:func:`pitune_core.predict.embeddings.per_sample_grads`), equal up to float rounding
(``bench/bench_fisher.py``). Rounding could still swap two near-tied sources, so this script takes
``--cases`` logged π-Tuning runs (spread over targets, shots and seeds; a fixed seeded draw), redoes
their target side both ways (the same own expert: same data, seed and steps), and reports whether the
top-k equals the logged ``sources`` for each, the largest relative Fisher difference and the
timing. Exit status 1 if any selection differs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("PITUNE_QUIET", "1")

import numpy as np

from pitune_core.common import read_jsonl
from pitune_core.model.backbone import UnifiedBackbone
from pitune_core.paths import SHIPPED_STUDY, StudyPaths
from pitune_core.study.protocol import load_study_sources
from pitune_core.tune import baselines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--study", default=str(SHIPPED_STUDY))
    ap.add_argument("--plan", default="few-shot-v2")
    ap.add_argument("--cases", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    study = Path(args.study)
    plan = json.loads((StudyPaths(study).root / "protocol" / args.plan / "plan.json").read_text())
    recs = [r for r in read_jsonl(StudyPaths(study).root / "protocol" / args.plan / "runs.jsonl")
            if r.get("status") == "done" and r["job"]["approach"] == "pi-tuning"]
    if not recs:
        print("no logged pi-tuning runs")
        return 2
    random.Random(args.seed).shuffle(recs)
    picked, seen = [], set()
    for r in recs:  # one case per target first, then the rest
        if r["job"]["target"] not in seen or len(seen) >= args.cases:
            picked.append(r)
            seen.add(r["job"]["target"])
        if len(picked) == args.cases:
            break
    sources = load_study_sources(study, plan["method"])
    bb = UnifiedBackbone.load(StudyPaths(study).backbone)
    recipe = baselines.Recipe(**plan["recipe"])
    k = plan["k"]
    loop_fisher = baselines.fisher_on
    differ = 0
    print(f"{'target':24s} {'shots':>5s} {'seed':>4s} | {'logged top-k':40s} | loop = logged | batched = loop | "
          f"max rel diff | loop s | batched s")
    for r in picked:
        job, res = r["job"], r["result"]
        got, fish, secs = {}, {}, {}
        for which in ("loop", "batched"):
            def fisher(*a, which=which, **kw):
                t0 = time.perf_counter()
                out = loop_fisher(*a, batched=(which == "batched"), **kw)
                secs[which] = time.perf_counter() - t0
                fish[which] = out
                return out
            baselines.fisher_on = fisher
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    side = baselines.target_side(job["target"], sources, bb, plan["method"], job["shots"], job["seed"],
                                                 res["steps"]["select"], tmp, recipe)
            finally:
                baselines.fisher_on = loop_fisher
            got[which] = [n for n, _ in side.ranking[:k]]
        rel = max(float(np.abs(fish["batched"][g] - fish["loop"][g]).max() / max(np.abs(fish["loop"][g]).max(), 1e-300))
                  for g in fish["loop"])
        ok_log, ok_b = got["loop"] == res["sources"], got["batched"] == got["loop"]
        differ += (not ok_log) + (not ok_b)
        print(f"{job['target']:24s} {str(job['shots']):>5s} {job['seed']:4d} | {','.join(res['sources']):40s} | "
              f"{str(ok_log):13s} | {str(ok_b):14s} | {rel:12.2e} | {secs['loop']:6.2f} | {secs['batched']:9.2f}",
              flush=True)
    print(f"\n{len(picked)} runs, {differ} selection(s) differ")
    return 1 if differ else 0


if __name__ == "__main__":
    raise SystemExit(main())
