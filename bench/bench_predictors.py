"""Cost of each transfer predictor per target, on CPU (or the current device).

    python bench/bench_predictors.py [--target movie_sentiment] [--shots 4,16,full] [--plan plans/transfer-v2.json]
                                     [--study precomputed] [--fisher-n 64] [--steps 25] [--predictors ...] [--json OUT]

For one target and the plan's other tasks as sources (the study's full-data experts), every
predictor of :mod:`pitune_core.predict.predictors` is timed at each target data size, twice:

- ``cold``: nothing cached: the source side (each source's Fisher / weights / data embedding) is
  computed too. A user pays this once per source pool; it is shared by all targets.
- ``target``: the source side already cached (what each further target costs): the target's data,
  the target expert trained at its data size where the predictor needs one, the target's own
  embedding, and for the expert-on-target predictors (expert_accuracy / expert_loglik / logme)
  one pass of every source expert over the target's examples.

Wall-clock and process CPU seconds are both reported (CPU seconds are the fair number on a shared
machine). Everything runs in this one process, side by side; torch uses ``--threads`` threads.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("PITUNE_QUIET", "1")

import torch

from pitune_core.common import parse_shots_list
from pitune_core.model.backbone import UnifiedBackbone
from pitune_core.paths import REPO_ROOT, StudyPaths
from pitune_core.predict.predictors import (
    PREDICTORS,
    PredictorContext,
    available_examples,
    predict_row,
)
from pitune_core.study.transfer import load_plan


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plan", default=str(REPO_ROOT / "plans" / "transfer-v2.json"))
    ap.add_argument("--study", default=str(REPO_ROOT / "precomputed"))
    ap.add_argument("--target", default="movie_sentiment")
    ap.add_argument("--shots", default="4,16,full")
    ap.add_argument("--predictors", nargs="*", default=list(PREDICTORS))
    ap.add_argument("--sources", type=int, help="only the first N of the plan's other tasks as sources")
    ap.add_argument("--fisher-n", type=int)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="write the table here too")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    plan = load_plan(a.plan)
    sp = StudyPaths(Path(a.study))
    tasks = [a.target] + [t for t in plan.tasks if t != a.target][: a.sources]
    bb = UnifiedBackbone.load(sp.backbone)
    experts = {t: sp.experts_of(plan.method) / t for t in tasks}
    shots_list = parse_shots_list(a.shots)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ctx = PredictorContext(bb, experts, method=plan.method, steps=a.steps or plan.steps, batch_size=plan.batch_size,
                               fisher_n=a.fisher_n or plan.fisher_n, cache_dir=Path(tmp))
        for shots in shots_list:
            target, w_data, _ = timed(lambda shots=shots: available_examples(a.target, bb, shots, seed=0))
            for p in a.predictors:
                res = {}
                for phase in ("cold", "target"):
                    if phase == "cold":
                        for f in Path(tmp).glob("*.npz"):
                            f.unlink()
                    ctx.clear()
                    _, w, c = timed(lambda p=p, target=target: predict_row(p, target, ctx))
                    res[phase] = (w, c)
                rows.append({"predictor": p, "target_data": "full" if shots is None else f"{shots}-shot",
                             "n_examples": len(target.tensors), "n_sources": len(tasks) - 1,
                             "cold_wall_s": round(res["cold"][0], 2), "cold_cpu_s": round(res["cold"][1], 2),
                             "target_wall_s": round(res["target"][0], 2), "target_cpu_s": round(res["target"][1], 2),
                             "data_load_s": round(w_data, 2)})
                r = rows[-1]
                print(f"{r['target_data']:8s} {p:16s} per target {r['target_cpu_s']:7.2f} cpu-s ({r['target_wall_s']:7.2f} wall)"
                      f"   cold {r['cold_cpu_s']:7.2f} cpu-s ({r['cold_wall_s']:7.2f} wall)", flush=True)
    print(f"target {a.target}, {len(tasks) - 1} sources, fisher_n {ctx.fisher_n}, {ctx.steps} steps, "
          f"{torch.get_num_threads()} thread(s), device {bb.device}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
