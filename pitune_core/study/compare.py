"""The study's compare stage: π-Tuning against the baselines on the planned targets (resumable)."""

from __future__ import annotations

import json
from pathlib import Path

from pitune_core.common import progress
from pitune_core.paths import RESULTS_FILE, RUNS_LOG_FILE, StudyPaths
from pitune_core.study.outputs import _write_csv, expert_dir
from pitune_core.study.plan import StudyPlan


def run_compare(root: Path, bb, plan: StudyPlan) -> None:
    from pitune_core.predict.similarity import read_similarity_csv
    from pitune_core.study.transfer import read_jsonl, shard_from_env, take_shard
    from pitune_core.study.results import result_row
    from pitune_core.tune.baselines import Sources, run_method

    names, S = read_similarity_csv(StudyPaths(root).similarity_csv("lora", "fisher"))
    sources = Sources({t: str(expert_dir(root, "lora", t)) for t in plan.tasks}, names, S)
    out = StudyPaths(root).compare
    out.mkdir(parents=True, exist_ok=True)
    log = out / RUNS_LOG_FILE

    def read_done() -> dict:
        return {(r["target"], r["approach"], r["shots"], r["seed"]): r for r in read_jsonl(log)}

    jobs = [(t, a, s, seed) for seed in plan.compare_seeds for s in plan.compare_shots for t in plan.compare_targets
            for a in (plan.compare_approaches if s is not None else plan.compare_full_shot_approaches)
            if s is not None or seed in plan.compare_full_shot_seeds]
    shard = shard_from_env()
    jobs = take_shard(jobs)
    done = read_done()
    for t, a, s, seed in progress(jobs, desc="compare"):
        if (t, a, s, seed) in done or (t, a, s, seed) in (done := read_done()):  # another shard may have run it
            continue
        r = run_method(a, t, sources, bb, "lora", k=plan.k, shots=s, seed=seed)
        with open(log, "a") as f:
            f.write(json.dumps(r) + "\n")
        done[(t, a, s, seed)] = r
    planned = set(jobs) if not shard else None
    rows = [result_row(r) for key, r in read_done().items() if planned is None or key in planned]
    _write_csv(out / RESULTS_FILE, rows)
