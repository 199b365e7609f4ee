"""Does the prediction predict? Measure real pairwise transfer and score the embeddings against it.

For every ordered pair (source, target) of a task subset: initialise the target's expert from the
source's expert and tune it few-shot (same budget for all); compare with a target expert trained
from scratch under the same budget. The gain matrix (accuracy points, rows targets, columns
sources) is the ground truth; Spearman correlation between predicted similarity and actual gain,
and how often the predicted top-3 contains the actual best source, score each embedding.

Every finished (target, source, seed) is appended to ``pairs.jsonl`` at once, so a killed study
resumes where it stopped.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from scipy.stats import spearmanr

from pitune_core.model.backbone import UnifiedBackbone
from pitune_core.model.experts import TrainConfig, train_expert
from pitune_core.data.tasks import get_task


@dataclass
class TransferBudget:
    """The few-shot budget every pair gets (same for transfer and from-scratch)."""

    shots: int = 8
    steps: int = 30
    batch_size: int = 16
    seeds: tuple[int, ...] = (0, 1)
    eval_limit: int | None = 200  # test examples scored per pair (a seeded subset, same for every pair)

    def train_config(self, seed: int) -> TrainConfig:
        return TrainConfig(min_steps=self.steps, max_steps=self.steps, batch_size=self.batch_size, seed=seed)


def few_shot_score(target: str, method: str, backbone: UnifiedBackbone, budget: TransferBudget, seed: int,
                   init_from: str | Path | None = None) -> float:
    """Headline test metric of a few-shot expert on ``target`` (from scratch or from a source)."""
    spec = get_task(target)
    shots = min(budget.shots, int(np.bincount(spec.load().train.labels).min()))
    res = train_expert(spec, method, backbone, shots=shots, seed=seed, out=None,
                       train_config=budget.train_config(seed), init_from=init_from, evaluate_zero_shot=False,
                       eval_limit=budget.eval_limit)
    return float(res.meta["metrics"]["test"][spec.metric])


def read_jsonl(path: Path) -> list[dict]:
    """Records of an append-only JSONL log; a line cut by a crash is skipped (its job is redone)."""
    records = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def shard_from_env() -> tuple[int, int] | None:
    """``PITUNE_SHARD=i/n``: this process takes every n-th job starting at i, so several processes
    can share one long stage (the stage is only recorded as finished by an unsharded run)."""
    v = os.environ.get("PITUNE_SHARD")
    if not v:
        return None
    i, n = (int(x) for x in v.split("/"))
    if not 0 <= i < n:
        raise ValueError(f"PITUNE_SHARD={v!r}: expected i/n with 0 <= i < n")
    return i, n


def take_shard(jobs: list) -> list:
    shard = shard_from_env()
    return jobs if shard is None else [j for k, j in enumerate(jobs) if k % shard[1] == shard[0]]


def _read_done(path: Path) -> dict[tuple[str, str, int], float]:
    return {(r["target"], r["source"], int(r["seed"])): float(r["score"]) for r in read_jsonl(path)}


def _start_log(out: Path, method: str, tasks: list[str], budget: TransferBudget) -> Path:
    """Open (or resume) ``out/pairs.jsonl``; refuse to mix results made under another budget."""
    out.mkdir(parents=True, exist_ok=True)
    log, meta = out / "pairs.jsonl", out / "budget.json"
    same = ("method", "shots", "steps", "batch_size", "eval_limit")
    want = {"method": method, **asdict(budget)}
    if meta.exists() and read_jsonl(log):
        had = json.loads(meta.read_text())
        diff = [k for k in same if had.get(k) != want[k]]
        if diff:
            raise ValueError(f"{log} holds pairs made with a different budget ({', '.join(f'{k}={had.get(k)}' for k in diff)}); "
                             f"use another output directory or delete it to start over")
    meta.write_text(json.dumps({"method": method, "tasks": tasks, **asdict(budget)}, indent=2))
    return log


def pair_jobs(tasks: list[str], seeds: tuple[int, ...]) -> list[tuple[str, str, int]]:
    """Every (target, source-or-'scratch', seed) the study needs."""
    return [(t, s, seed) for seed in seeds for t in tasks for s in ["scratch", *[x for x in tasks if x != t]]]


def run_pairs(tasks: list[str], expert_dirs: dict[str, str | Path], method: str, backbone: UnifiedBackbone,
              budget: TransferBudget, out: str | Path, on_pair: Callable[[int, int, tuple], None] | None = None) -> Path:
    """Run (or resume) the pairwise study; results accumulate in ``out/pairs.jsonl``."""
    missing = [t for t in tasks if t not in expert_dirs]
    if missing:
        raise ValueError(f"no {method} expert for {', '.join(missing)}; train them first")
    log = _start_log(Path(out), method, tasks, budget)
    done = _read_done(log)
    jobs = take_shard(pair_jobs(tasks, budget.seeds))
    for i, (t, s, seed) in enumerate(jobs):
        if (t, s, seed) not in done and (t, s, seed) not in (done := _read_done(log)):
            score = few_shot_score(t, method, backbone, budget, seed, None if s == "scratch" else expert_dirs[s])
            with open(log, "a") as f:
                f.write(json.dumps({"target": t, "source": s, "seed": seed, "score": score}) + "\n")
            done[(t, s, seed)] = score
        if on_pair:
            on_pair(i + 1, len(jobs), (t, s, seed))
    return log


def run_pairs_on(executor: str, tasks: list[str], expert_dirs: dict[str, str | Path], method: str,
                 budget: TransferBudget, out: str | Path, projector: str | Path, db: str | Path,
                 address: str | None = None, max_parallel: int | None = None) -> Path:
    """The same study, fanned out as one run per pair through the run registry, executed by the
    local executor (worker processes) or Ray (``address=None``: a local Ray started on demand).

    Every job runs with one thread (``num_cpus=1``), so results do not depend on the executor.
    Finished pairs land in ``pairs.jsonl`` exactly as with :func:`run_pairs`; failed pairs are
    reported and left for the next (resumed) call.
    """
    from pitune_core.runs.registry import RunRegistry

    log = _start_log(Path(out), method, tasks, budget)
    done = _read_done(log)
    todo = [j for j in pair_jobs(tasks, budget.seeds) if j not in done]
    configs = [{"target": t, "source": None if s == "scratch" else s,
                "source_dir": None if s == "scratch" else str(Path(expert_dirs[s]).resolve()),
                "seed": seed, "shots": budget.shots, "steps": budget.steps, "eval_limit": budget.eval_limit,
                "method": method, "projector": str(Path(projector).resolve())} for t, s, seed in todo]
    if not configs:
        return log
    reg = RunRegistry(db)
    resources = {"num_cpus": 1}
    if executor == "ray":
        from pitune_core.runs.ray_executor import RayExecutor

        ex = RayExecutor(reg, address=address, num_cpus=max_parallel)
        try:
            ids = ex.map("transfer-pair", configs, resources=resources)
            records = ex.wait(ids)
        finally:
            ex.shutdown()
    elif executor == "local":
        from pitune_core.runs.executor import run_until_idle, wait

        ids = [reg.submit("transfer-pair", c, name=f"pair {c['target']} <- {c['source'] or 'scratch'}",
                          resources=resources) for c in configs]
        run_until_idle(reg, max_parallel)
        records = wait(reg, ids)
    else:
        raise ValueError(f"unknown executor {executor!r}; choose inprocess, local or ray")
    failed = []
    with open(log, "a") as f:
        for rid in ids:
            rec = records[rid]
            if rec.status == "succeeded":
                m = rec.metrics
                f.write(json.dumps({"target": m["target"], "source": m["source"], "seed": m["seed"],
                                    "score": m["score"]}) + "\n")
            else:
                last = (rec.error or "").strip().splitlines()[-1:]
                failed.append(f"{rid} ({rec.status}{': ' + last[0] if last else ''})")
    if failed:
        raise RuntimeError(f"{len(failed)} pair run(s) did not succeed: {'; '.join(failed[:5])}. "
                           f"Inspect them with `pitune runs show ID --db {db}`; rerun to retry them.")
    return log


def gain_matrices(pairs_path: str | Path, tasks: list[str]) -> dict[int, np.ndarray]:
    """Per seed: gains in accuracy points, ``G[i, j]`` = target i from source j minus scratch (NaN diagonal)."""
    done = _read_done(Path(pairs_path))
    seeds = sorted({k[2] for k in done})
    out = {}
    for seed in seeds:
        G = np.full((len(tasks), len(tasks)), np.nan)
        for i, t in enumerate(tasks):
            base = done.get((t, "scratch", seed))
            for j, s in enumerate(tasks):
                if s != t and base is not None and (t, s, seed) in done:
                    G[i, j] = 100.0 * (done[(t, s, seed)] - base)
        out[seed] = G
    return out


def write_matrix_csv(path: str | Path, tasks: list[str], M: np.ndarray) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["target", *tasks])
        for t, row in zip(tasks, M):
            w.writerow([t, *["" if np.isnan(v) else f"{v:.4f}" for v in row]])


def read_matrix_csv(path: str | Path) -> tuple[list[str], list[str], np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    cols = rows[0][1:]
    targets = [r[0] for r in rows[1:]]
    M = np.array([[float(v) if v != "" else np.nan for v in r[1:]] for r in rows[1:]])
    return targets, cols, M


def prediction_quality(sim: np.ndarray, sim_names: list[str], gains: np.ndarray, tasks: list[str],
                       k: int = 3) -> dict:
    """Spearman(similarity, gain) per target and top-k hit rate of the actual best source."""
    idx = [sim_names.index(t) for t in tasks]
    S = sim[np.ix_(idx, idx)]
    per_target = {}
    for i, t in enumerate(tasks):
        others = [j for j in range(len(tasks)) if j != i and not np.isnan(gains[i, j])]
        if len(others) < 3:
            continue
        s, g = S[i, others], gains[i, others]
        rho = spearmanr(s, g).statistic if np.ptp(s) > 0 and np.ptp(g) > 0 else 0.0
        best = others[int(np.argmax(g))]
        # deterministic top-k: highest similarity first, ties by name
        ranked = sorted(others, key=lambda j: (-S[i, j], tasks[j]))[:k]
        per_target[t] = {"spearman": float(rho), "hit": float(best in ranked), "best_source": tasks[best],
                         "predicted": [tasks[j] for j in ranked]}
    rhos = [v["spearman"] for v in per_target.values()]
    hits = [v["hit"] for v in per_target.values()]
    return {"mean_spearman": float(np.mean(rhos)) if rhos else float("nan"),
            f"top{k}_hit_rate": float(np.mean(hits)) if hits else float("nan"), "per_target": per_target}


def summarise_quality(per_seed: dict[str, dict[int, dict]], k: int = 3) -> dict:
    """Mean and spread over seeds, per embedding."""
    out = {}
    for emb, seeds in per_seed.items():
        rho = [q["mean_spearman"] for q in seeds.values()]
        hit = [q[f"top{k}_hit_rate"] for q in seeds.values()]
        out[emb] = {"spearman_mean": float(np.mean(rho)), "spearman_std": float(np.std(rho)),
                    f"top{k}_hit_mean": float(np.mean(hit)), f"top{k}_hit_std": float(np.std(hit)),
                    "seeds": {str(s): q for s, q in seeds.items()}}
    return out
