"""Does the prediction predict? Measure real pairwise transfer and score the embeddings against it.

For every ordered pair (source, target) of a task subset: initialise the target's expert from the
source's expert and tune it few-shot (same budget for all); compare with a target expert trained
from scratch under the same budget. The gain matrix (accuracy points, rows targets, columns
sources) is the ground truth; Spearman correlation between predicted similarity and actual gain,
and how often the predicted top-3 contains the actual best source, score each embedding.

Every finished (target, source, seed) is appended to ``pairs.jsonl`` at once, so a killed study
resumes where it stopped. Each record carries the key of its full configuration (method and
budget, :meth:`TransferBudget.key`), so pairs made under different budgets never mix.

The second half (:class:`TransferPlan`, ``plans/transfer-v2.json``) is the ground truth worth
predicting: >= 4 seeds, each with its own few-shot sample, every pair scored on the whole test
split; its split-half reliability (the noise ceiling, :mod:`pitune_core.predict.quality`); and
every predictor of :mod:`pitune_core.predict.predictors` at 4 / 16 shots and full data, scored
against it. All stages are resumable and shardable (``PITUNE_SHARD=i/n``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from pitune_core.common import read_jsonl, write_atomic  # read_jsonl: re-exported (callers import it from here)
from pitune_core.spec.vocab import (LEARNED_PREDICTOR_NAMES, PAIR_SHOTS, QUALITY_K, SCORED_PREDICTOR_NAMES, STUDY_SHOTS,
                                    SUCCEEDED)
from pitune_core.spec.env import SHARD_ENV, shard_from_env  # noqa: F401  (re-exported: the stages' callers import them here)
from pitune_core.data.tasks import get_task
from pitune_core.model.backbone import UnifiedBackbone
from pitune_core.model.device import describe_device
from pitune_core.model.experts import TrainConfig, train_expert
from pitune_core.study.read.stats import paired
from pitune_core.study.read.tasks_file import task_modalities
from pitune_core.common import check_plan_name
from pitune_core.predict.predictors import PREDICTORS, available_examples, predict_row
from pitune_core.predict import learned
from pitune_core.predict.quality import (METRICS, seed_reliability, summarise, summarise_within, target_quality,
                                         within_group_spearman)
from pitune_core.runs.registry import RunRegistry
from pitune_core.runs.executor import run_until_idle, wait


@dataclass
class TransferBudget:
    """The few-shot budget every pair gets (same for transfer and from-scratch)."""

    shots: int | None = PAIR_SHOTS  # examples per class (None: all the training data)
    steps: int = 30
    batch_size: int = 16
    seeds: tuple[int, ...] = (0, 1)
    eval_limit: int | None = 200  # test examples scored per pair (a seeded subset, same for every pair)

    def train_config(self, seed: int) -> TrainConfig:
        return TrainConfig(min_steps=self.steps, max_steps=self.steps, batch_size=self.batch_size, seed=seed)

    def key(self, method: str) -> str:
        """Short hash of everything that makes a pair's score (all but the seed list)."""
        cfg = {"method": method, "shots": self.shots, "steps": self.steps, "batch_size": self.batch_size,
               "eval_limit": self.eval_limit}
        return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]


def few_shot_score(target: str, method: str, backbone: UnifiedBackbone, budget: TransferBudget, seed: int,
                   init_from: str | Path | None = None) -> float:
    """Headline test metric of a few-shot expert on ``target`` (from scratch or from a source)."""
    spec = get_task(target)
    shots = None if budget.shots is None else min(budget.shots, int(np.bincount(spec.load().train.labels).min()))
    res = train_expert(spec, method, backbone, shots=shots, seed=seed, out=None,
                       train_config=budget.train_config(seed), init_from=init_from, evaluate_zero_shot=False,
                       eval_limit=budget.eval_limit, evaluate_val=False)  # the pair's score is the test metric
    return float(res.meta["metrics"]["test"][spec.metric])


def take_shard(jobs: list) -> list:
    shard = shard_from_env()
    return jobs if shard is None else [j for k, j in enumerate(jobs) if k % shard[1] == shard[0]]


def _read_done(path: Path, key: str | None = None) -> dict[tuple[str, str, int], float]:
    """Finished pairs; with ``key``, only those of that configuration (records without a key
    predate keys and belong to the log's ``budget.json``, which :func:`_start_log` checked)."""
    return {(r["target"], r["source"], int(r["seed"])): float(r["score"]) for r in read_jsonl(path)
            if key is None or r.get("key", key) == key}


def _record(t: str, s: str, seed: int, score: float, key: str | None, device: str | None = None) -> str:
    rec = {"target": t, "source": s, "seed": seed, "score": score}
    if key is not None:
        rec["key"] = key
    if device is not None:  # where the pair ran (rows written before this field existed ran on CPU)
        rec["device"] = device
    return json.dumps(rec) + "\n"


def _start_log(out: Path, method: str, tasks: list[str], budget: TransferBudget) -> Path:
    """Open (or resume) ``out/pairs.jsonl``; refuse to mix results made under another budget."""
    out.mkdir(parents=True, exist_ok=True)
    log, meta = out / "pairs.jsonl", out / "budget.json"
    same = ("method", "shots", "steps", "batch_size", "eval_limit")
    want = {"method": method, **asdict(budget)}
    if meta.exists() and any("key" not in r for r in read_jsonl(log)):  # keyed records never mix
        had = json.loads(meta.read_text())
        diff = [k for k in same if had.get(k) != want[k]]
        if diff:
            raise ValueError(f"{log} holds pairs made with a different budget ({', '.join(f'{k}={had.get(k)}' for k in diff)}); "
                             f"use another output directory or delete it to start over")
    write_atomic(meta, json.dumps({"method": method, "tasks": tasks, **asdict(budget)}, indent=2))
    return log


def pair_jobs(tasks: list[str], seeds: tuple[int, ...], targets: list[str] | None = None,
              sources: list[str] | None = None) -> list[tuple[str, str, int]]:
    """Every (target, source-or-'scratch', seed) the study needs (``targets``: only these rows;
    ``sources``: only these columns, e.g. the library's admitted experts; default every task)."""
    return [(t, s, seed) for seed in seeds for t in tasks if targets is None or t in targets
            for s in ["scratch", *[x for x in tasks if x != t and (sources is None or x in sources)]]]


def run_pairs(tasks: list[str], expert_dirs: dict[str, str | Path], method: str, backbone: UnifiedBackbone,
              budget: TransferBudget, out: str | Path, on_pair: Callable[[int, int, tuple], None] | None = None,
              targets: list[str] | None = None, sources: list[str] | None = None) -> Path:
    """Run (or resume) the pairwise study; results accumulate in ``out/pairs.jsonl``
    (``targets``: only these targets' rows; ``sources``: only these sources, default every task)."""
    missing = [t for t in tasks if t not in expert_dirs]
    if missing:
        raise ValueError(f"no {method} expert for {', '.join(missing)}; train them first")
    log = _start_log(Path(out), method, tasks, budget)
    key = budget.key(method)
    done = _read_done(log, key)
    jobs = take_shard(pair_jobs(tasks, budget.seeds, targets, sources))
    where = describe_device(backbone.device)
    for i, (t, s, seed) in enumerate(jobs):
        if (t, s, seed) not in done and (t, s, seed) not in (done := _read_done(log, key)):
            score = few_shot_score(t, method, backbone, budget, seed, None if s == "scratch" else expert_dirs[s])
            with open(log, "a") as f:
                f.write(_record(t, s, seed, score, key, where))
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
    log = _start_log(Path(out), method, tasks, budget)
    key = budget.key(method)
    done = _read_done(log, key)
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
        from pitune_core.runs.ray_executor import RayExecutor  # lazy: loads ray (an optional executor)

        ex = RayExecutor(reg, address=address, num_cpus=max_parallel)
        try:
            ids = ex.map("transfer-pair", configs, resources=resources)
            records = ex.wait(ids)
        finally:
            ex.shutdown()
    elif executor == "local":
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
            if rec.status == SUCCEEDED:
                m = rec.metrics
                f.write(_record(m["target"], m["source"], m["seed"], m["score"], key, m.get("device")))
            else:
                last = (rec.error or "").strip().splitlines()[-1:]
                failed.append(f"{rid} ({rec.status}{': ' + last[0] if last else ''})")
    if failed:
        raise RuntimeError(f"{len(failed)} pair run(s) did not succeed: {'; '.join(failed[:5])}. "
                           f"Inspect them with `pitune runs show ID --db {db}`; rerun to retry them.")
    return log


def gain_matrices(pairs_path: str | Path, tasks: list[str], key: str | None = None) -> dict[int, np.ndarray]:
    """Per seed: gains in accuracy points, ``G[i, j]`` = target i from source j minus scratch (NaN diagonal).

    ``key`` selects one configuration of a log holding several; without it the log must hold one."""
    if key is None:
        keys = {r.get("key") for r in read_jsonl(Path(pairs_path))}
        if len(keys) > 1:
            raise ValueError(f"{pairs_path} holds pairs of {len(keys)} configurations; pass the key of one "
                             f"({', '.join(sorted(str(k) for k in keys))})")
    done = _read_done(Path(pairs_path), key)
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


def prediction_quality(sim: np.ndarray, sim_names: list[str], gains: np.ndarray, tasks: list[str],
                       k: int = QUALITY_K) -> dict:
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


def summarise_quality(per_seed: dict[str, dict[int, dict]], k: int = QUALITY_K) -> dict:
    """Mean and spread over seeds, per embedding."""
    out = {}
    for emb, seeds in per_seed.items():
        rho = [q["mean_spearman"] for q in seeds.values()]
        hit = [q[f"top{k}_hit_rate"] for q in seeds.values()]
        out[emb] = {"spearman_mean": float(np.mean(rho)), "spearman_std": float(np.std(rho)),
                    f"top{k}_hit_mean": float(np.mean(hit)), f"top{k}_hit_std": float(np.std(hit)),
                    "seeds": {str(s): q for s, q in seeds.items()}}
    return out


# ============================================================================= the v2 study

@dataclass
class TransferPlan:
    """A pre-registered ground-truth study (``plans/transfer-v2.json``): which tasks, the few-shot
    budget of every pair, the seeds (each its own few-shot sample), and which predictors to score
    at which target data sizes (``target_shots``: shots per class, ``null`` = full data)."""

    name: str
    tasks: list[str]
    targets: list[str] | None = None  # the tasks measured as targets (default: all); every task is a source
    method: str = "lora"
    shots: int = 16
    steps: int = 50
    batch_size: int = 16
    eval_limit: int | None = None  # None: the whole test split
    seeds: tuple[int, ...] = (0, 1, 2, 3)
    predictors: list[str] = field(default_factory=list)
    target_shots: list[int | None] = field(default_factory=lambda: list(STUDY_SHOTS))
    predictor_seeds: tuple[int, ...] = (0, 1, 2, 3)
    fisher_n: int = 64
    k: int = QUALITY_K
    notes: str = ""

    @property
    def budget(self) -> TransferBudget:
        return TransferBudget(shots=self.shots, steps=self.steps, batch_size=self.batch_size,
                              seeds=tuple(self.seeds), eval_limit=self.eval_limit)

    def key(self) -> str:
        return self.budget.key(self.method)


_PLAN_TYPES = {"name": str, "tasks": list, "targets": list, "method": str, "shots": int, "steps": int, "batch_size": int,
               "eval_limit": (int, type(None)), "seeds": list, "predictors": list, "target_shots": list,
               "predictor_seeds": list, "fisher_n": int, "k": int, "notes": str}


def load_plan(path: str | Path) -> TransferPlan:
    """Read and validate a plan file (JSON, at most 1 MB; unknown or mistyped fields are refused)."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size > 2**20:
        raise ValueError(f"{path}: not a plan file (missing or larger than 1 MB)")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a plan is a JSON object")  # noqa: TRY004 (a user error: one line)
    unknown = sorted(set(raw) - set(_PLAN_TYPES))
    if unknown:
        raise ValueError(f"{path}: unknown field(s) {', '.join(unknown)}; known: {', '.join(_PLAN_TYPES)}")
    for k, v in raw.items():
        if not isinstance(v, _PLAN_TYPES[k]) or isinstance(v, bool):
            raise ValueError(f"{path}: field {k!r} has the wrong type ({type(v).__name__})")  # noqa: TRY004
    for t in raw.get("tasks", []):
        get_task(t)
    extra = [t for t in raw.get("targets") or [] if t not in raw.get("tasks", [])]
    if extra or ("targets" in raw and not raw["targets"]):
        raise ValueError(f"{path}: targets must be a non-empty subset of tasks"
                         + (f" ({', '.join(map(str, extra))} are not tasks)" if extra else ""))
    bad = [p for p in raw.get("predictors", []) if p not in SCORED_PREDICTOR_NAMES]
    if bad:
        raise ValueError(f"{path}: unknown predictor(s) {', '.join(bad)}; choose from {', '.join(SCORED_PREDICTOR_NAMES)}")
    if any(s is not None and (not isinstance(s, int) or s < 1) for s in raw.get("target_shots", [])):
        raise ValueError(f"{path}: target_shots are positive integers or null (full data)")
    for k in ("seeds", "predictor_seeds"):
        if k in raw:
            if not all(isinstance(x, int) and not isinstance(x, bool) for x in raw[k]) or len(set(raw[k])) != len(raw[k]):
                raise ValueError(f"{path}: {k} must be distinct integers")
            raw[k] = tuple(raw[k])
    if "name" not in raw or "tasks" not in raw or len(raw["tasks"]) < 3:
        raise ValueError(f"{path}: a plan needs a name and at least 3 tasks")

    try:
        check_plan_name(raw["name"])
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return TransferPlan(**raw)


def run_plan_pairs(plan: TransferPlan, expert_dirs: dict[str, str | Path], backbone: UnifiedBackbone, out: str | Path,
                   on_pair=None, targets: list[str] | None = None, sources: list[str] | None = None) -> Path:
    """The plan's ground truth: every (target, source | scratch, seed), resumable and shardable
    (``sources``: the experts offered as sources; a gated expert is a target only)."""
    return run_pairs(plan.tasks, expert_dirs, plan.method, backbone, plan.budget, out, on_pair=on_pair,
                     targets=targets if targets is not None else plan.targets, sources=sources)


def gain_tensor(pairs_path: str | Path, tasks: list[str], seeds, key: str | None = None) -> np.ndarray:
    """Gains as one ``(n_seeds, n_targets, n_sources)`` array in ``seeds`` order (NaN where missing)."""
    per_seed = gain_matrices(pairs_path, tasks, key)
    return np.stack([per_seed.get(s, np.full((len(tasks), len(tasks)), np.nan)) for s in seeds])


def reliability(plan: TransferPlan, pairs_path: str | Path) -> dict:
    """Split-half reliability of the plan's measured gains (the noise ceiling); see
    :func:`pitune_core.predict.quality.seed_reliability`."""
    G = gain_tensor(pairs_path, plan.tasks, plan.seeds, plan.key())
    return seed_reliability(G, plan.tasks, plan.tasks, plan.k)


def predictor_jobs(plan: TransferPlan, targets: list[str] | None = None) -> list[tuple[str, int | None, int]]:
    """(target, shots, seed) groups; full data needs one seed (its rows do not depend on the sample).
    ``targets`` default: the plan's."""
    targets = targets if targets is not None else plan.targets
    return [(t, shots, seed) for seed in plan.predictor_seeds for t in plan.tasks for shots in plan.target_shots
            if (shots is not None or seed == plan.predictor_seeds[0]) and (targets is None or t in targets)]


def _row_key(plan: TransferPlan, ctx) -> str:
    cfg = {"tasks": plan.tasks, "method": plan.method, "steps": ctx.steps, "batch_size": ctx.batch_size,
           "fisher_n": ctx.fisher_n, "fisher_batch": ctx.fisher_batch, "data_n": ctx.data_n, "seed": ctx.seed,
           "probe_seed": ctx.probe_seed, "probe_std": ctx.probe_std, "backbone": ctx.backbone.backbone_id}
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]


def run_predictors(plan: TransferPlan, ctx, out: str | Path, on_row=None, targets: list[str] | None = None) -> Path:
    """Every predictor's row for every (target, target data size, seed): appended to
    ``out/predictors.jsonl`` (keyed by the predictor settings), with its wall time; resumable and
    shardable by (target, shots, seed) group so the per-target caches are shared. The predictors that
    learn from measured transfer have no row here: :func:`quality_table` makes theirs."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "predictors.jsonl"
    key = _row_key(plan, ctx)

    def done_now():
        return {(r["predictor"], r["target"], r["shots"], r["seed"]) for r in read_jsonl(log) if r.get("key") == key}

    done = done_now()
    jobs = take_shard(predictor_jobs(plan, targets))
    for i, (t, shots, seed) in enumerate(jobs):
        todo = [p for p in plan.predictors if p in PREDICTORS and (p, t, shots, seed) not in done]
        if todo and (todo := [p for p in todo if (p, t, shots, seed) not in (done := done_now())]):
            target = available_examples(t, ctx.backbone, shots, seed)
            for p in todo:
                t0 = time.perf_counter()
                row = predict_row(p, target, ctx)
                rec = {"predictor": p, "target": t, "shots": shots, "seed": seed, "key": key,
                       "sources": ctx.sources_for(t), "row": [float(x) for x in row],
                       "seconds": round(time.perf_counter() - t0, 3)}
                with open(log, "a") as f:
                    f.write(json.dumps(rec) + "\n")
        ctx._target_model = (None, None)  # next group: another target expert
        ctx._mem = {k: v for k, v in ctx._mem.items() if isinstance(k, str)}  # keep the source-side cache only
        if on_row:
            on_row(i + 1, len(jobs), (t, shots, seed))
    return log


def predictor_records(out: str | Path, key: str | None = None) -> tuple[list[dict], str | None]:
    """``out/predictors.jsonl``'s rows of one predictor configuration and its key (default: the
    newest row's), so rows made under other predictor settings or another backbone never mix."""
    records = read_jsonl(Path(out) / "predictors.jsonl")
    key = key or (records[-1].get("key") if records else None)
    return [r for r in records if r.get("key") == key], key


#: the width of a tie in the paired comparison of two predictors' per-target metric: the plan states
#: none for predictors, so a tie is an exact equality (e.g. the same ranking, the same top-1 hit)
VERSUS_TIE = 0.0


def compare_predictors(a: dict[str, dict], b: dict[str, dict], metric: str = "spearman", seed: int = 0) -> dict:
    """Paired difference ``a - b`` of two predictors' per-target ``metric`` (``per_target`` dicts of
    the quality table) over their common targets where both are defined: the mean, its BCa bootstrap
    95 % CI over targets (``ci``, the rule; the percentile interval beside it), the two-sided Wilcoxon
    signed-rank p and wins/ties/losses (tie: ``|d| <= VERSUS_TIE``), all by
    :func:`pitune_core.study.read.stats.paired`."""
    ts = [t for t in a if t in b and np.isfinite(a[t][metric]) and np.isfinite(b[t][metric])]
    p = paired([a[t][metric] for t in ts], [b[t][metric] for t in ts], tie=VERSUS_TIE, seed=seed)
    return {"metric": metric, "n_targets": p.n, "mean_difference": p.mean, "ci": (p.ci_low, p.ci_high),
            "ci_method": "BCa", "ci_percentile": (p.pct_low, p.pct_high), "fragile": p.fragile,
            "wilcoxon_p": p.p_wilcoxon, "wins": p.wins, "ties": p.ties, "losses": p.losses, "tie": VERSUS_TIE}


def _measured_gain(G: np.ndarray) -> np.ndarray:
    """The seed mean of a gain tensor where every seed is measured, NaN elsewhere (the cells a row is scored on)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.where(np.isnan(G).any(axis=0), np.nan, np.nanmean(G, axis=0))


def learned_rows(plan: TransferPlan, G: np.ndarray, records: list[dict], modality: dict[str, str],
                 names=LEARNED_PREDICTOR_NAMES) -> list[dict]:
    """Rows of the predictors that learn from measured transfer (:mod:`pitune_core.predict.learned`), in
    the shape of ``predictors.jsonl``'s (``predictor, target, shots, sources, row, seconds``), one per
    main target and target data size of the plan, for :func:`quality_table` to score beside them.

    They learn from the plan's main targets only (``plan.targets``; a confirmation set is another plan):
    ``G`` (the gain tensor over ``plan.tasks``) is read at those rows, at the cells measured in every seed,
    over the sources measured on at least one of them (a gated expert is none). A target's row never
    reads its own row of ``G`` (``learned`` leaves it out everywhere):

    - ``transfer_history``: each source's mean gain on the other main targets of the target's
      modality; it reads no target data, so the same row at every size;
    - ``combined``: :data:`~pitune_core.predict.learned.COMBINED_FEATURES` that the records hold (at
      that size: each the mean over predictor seeds of its rows) and the transfer history, fitted
      leave-one-target-out over the main targets that have every feature's row at that size.

    ``seconds``: the row's wall time (a combined row adds its features' logged seconds)."""
    main = list(plan.targets or plan.tasks)
    M = _measured_gain(G)[[plan.tasks.index(t) for t in main]]
    used = ~np.isnan(M).all(axis=0)
    sources = [s for s, u in zip(plan.tasks, used) if u]
    M = M[:, used]
    out = []

    def add(p, t, shots, row, seconds):
        out.append({"predictor": p, "target": t, "shots": shots, "sources": sources, "row": [float(x) for x in row],
                    "seconds": round(float(seconds), 3)})

    if learned.TRANSFER_HISTORY in names and sources:
        t0 = time.perf_counter()
        hist = learned.transfer_history_rows(M, main, sources, modality)
        took = (time.perf_counter() - t0) / len(main)
        for shots in plan.target_shots:
            for t in main:
                add(learned.TRANSFER_HISTORY, t, shots, hist[t], took)
    if learned.COMBINED in names and sources:
        have = {r["predictor"] for r in records}
        feats = [f for f in learned.COMBINED_FEATURES if f in have]
        for shots in plan.target_shots:
            rows: dict[str, dict[str, np.ndarray]] = {f: {} for f in feats}
            secs = dict.fromkeys(main, 0.0)
            for f in feats:
                for t in main:
                    rs = [r for r in records if r["predictor"] == f and r["target"] == t and r["shots"] == shots]
                    if rs and all(s in r["sources"] for r in rs for s in sources if s != t):
                        rows[f][t] = np.mean([[r["row"][r["sources"].index(s)] if s != t else np.nan for s in sources]
                                              for r in rs], axis=0)
                        secs[t] += float(np.mean([r["seconds"] for r in rs]))
            ts = [t for t in main if all(t in rows[f] for f in feats)]
            if len(ts) < 3:  # a fold needs at least 2 training targets
                continue
            t0 = time.perf_counter()
            comb = learned.loto_combination_rows(rows, M[[main.index(t) for t in ts]], ts, sources, modality)
            took = (time.perf_counter() - t0) / len(ts)
            for t in ts:
                add(learned.COMBINED, t, shots, comb[t], secs[t] + took)
    return out


def quality_table(plan: TransferPlan, out: str | Path, key: str | None = None, learned_names=None) -> dict:
    """Every predictor at every target data size scored against the seed-averaged ground truth:
    per-target metrics averaged over the predictor seeds, means with bootstrap CIs over targets,
    fractions of the noise ceiling, and the paired difference to same-modality
    (:func:`compare_predictors`). Written to ``out/quality.json`` and ``out/quality.csv`` (with
    ``out/reliability.json``).

    ``key``: only predictor rows of this configuration (:func:`predictor_records`).
    ``learned_names``: the predictors that learn from measured transfer to score beside the logged
    rows (:func:`learned_rows`; default: those the plan lists), every row scored alike."""
    out = Path(out)
    G = gain_tensor(out / "pairs.jsonl", plan.tasks, plan.seeds, plan.key())
    rel = seed_reliability(G, plan.tasks, plan.tasks, plan.k)
    write_atomic(out / "reliability.json", json.dumps(rel, indent=2))
    mean_gain = _measured_gain(G)
    rows: dict[tuple[str, int | None], dict[str, list[dict]]] = {}
    modality = task_modalities(out.parent.parent / "tasks.json", plan.tasks)  # out: STUDY/groundtruth/PLAN, or not a study
    records, key = predictor_records(out, key)
    if learned_names is None:
        learned_names = [p for p in plan.predictors if p in LEARNED_PREDICTOR_NAMES]
    for r in records + learned_rows(plan, G, records, modality, learned_names):
        if r["target"] not in (plan.targets or plan.tasks) or r["target"] not in rel["per_target"]:
            continue
        i = plan.tasks.index(r["target"])
        cols = [j for j, s in enumerate(plan.tasks) if s != r["target"] and s in r["sources"]
                and not np.isnan(mean_gain[i, j])]
        pred = np.array([r["row"][r["sources"].index(plan.tasks[j])] for j in cols])
        q = target_quality(pred, mean_gain[i, cols], [plan.tasks[j] for j in cols], plan.k)
        q["seconds"] = r["seconds"]
        q["within_modality"] = within_group_spearman(pred, mean_gain[i, cols], [modality[plan.tasks[j]] for j in cols],
                                                     modality[r["target"]])
        rows.setdefault((r["predictor"], r["shots"]), {}).setdefault(r["target"], []).append(q)
    table, csv_rows = {}, []
    for (p, shots), per in sorted(rows.items(), key=lambda kv: (kv[0][0], kv[0][1] or 10**9)):
        keys = [m if m != "top3_hit" else f"top{plan.k}_hit" for m in METRICS] + ["seconds"]
        per_target = {t: {m: float(np.mean([q[m] for q in qs])) for m in keys} for t, qs in per.items()}
        with warnings.catch_warnings():  # a target with < 3 same-modality sources: NaN, left out
            warnings.simplefilter("ignore", RuntimeWarning)
            within = {t: float(np.nanmean([q["within_modality"] for q in qs])) for t, qs in per.items()}
        for t, v in within.items():
            per_target[t]["within_modality"] = v if np.isfinite(v) else None
        summary = summarise(per_target, rel, plan.k)
        label = "full" if shots is None else f"{shots}-shot"
        table.setdefault(label, {})[p] = {"n_targets": len(per_target), "summary": summary, "per_target": per_target,
                                          "within_modality": summarise_within(within),
                                          "seconds_per_target": float(np.mean([v["seconds"] for v in per_target.values()]))}
        csv_rows.append({"predictor": p, "target_data": label, "n_targets": len(per_target),
                         **{f"{m}_{x}": v for m, s in summary.items() for x, v in
                            (("mean", s["mean"]), ("ci_low", s["ci"][0]), ("ci_high", s["ci"][1]),
                             ("ceiling", s["ceiling"]),
                             ("of_ceiling", s.get("fraction_of_ceiling", s.get("excess_over_ceiling"))))},
                         "seconds_per_target": table[label][p]["seconds_per_target"]})
    for label, preds in table.items():
        if "same_modality" in preds:
            for p, v in preds.items():
                v["vs_same_modality"] = compare_predictors(v["per_target"], preds["same_modality"]["per_target"])
    result = {"plan": plan.name, "key": plan.key(), "predictor_key": key, "reliability": {"mean": rel["mean"],
              "reliability_of_mean_r": rel["reliability_of_mean_r"], "n_seeds": rel["n_seeds"]}, "table": table}
    write_atomic(out / "quality.json", json.dumps(result, indent=2))
    if csv_rows:
        with open(out / "quality.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(csv_rows[0]))
            w.writeheader()
            w.writerows(csv_rows)
    return result
