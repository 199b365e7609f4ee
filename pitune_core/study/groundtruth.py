"""Run a ground-truth transfer plan against a study: pairs, predictor rows, quality, stability.

One function, :func:`run_groundtruth`, owns what ``pitune transfer-study PLAN`` and the
``groundtruth`` stage of ``pitune precompute`` both do, so the two can never disagree: bind the
output folder to the backbone and source experts it is made with, run the requested stages (each
resumable and shardable with ``PITUNE_SHARD=i/n``), draw the predictors' graphs when the ground
truth lies inside the study, and list every file written in the study's manifest as it grows (so
the study keeps verifying part way through).

Stages: ``pairs`` (the measured transfer of every ordered pair), ``predictors`` (every predictor's
row at every target data size), ``quality`` (reliability + the predictor × data-size table, run once
all shards are done) and ``stability`` (Fisher top-k stability from disjoint samples; skipped when
``fisher_stability.json`` already holds the same sizes).
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from pitune_core.common import progress, read_jsonl, sha256_file, write_atomic
from pitune_core.paths import StudyPaths, cache_dir
from pitune_core.spec.vocab import EXPERT_META_FILE, LEARNED_PREDICTOR_NAMES, PREDICTOR_PREFIX

if TYPE_CHECKING:  # the module stays importable without torch (the CLI reads its stage names)
    from pitune_core.study.transfer import TransferPlan  # lazy: type checkers only (loads torch)

#: ``relatedness``: does a task world carry transfer within its families? (issue 27's pilot; reads pairs only)
STAGES = ("pairs", "predictors", "quality", "stability", "relatedness")
#: the stages whose jobs ``PITUNE_SHARD`` splits between processes (``stability`` is skipped by a shard,
#: ``quality`` reads every shard's rows); ``pitune transfer-study --workers`` runs these in workers
SHARDABLE = ("pairs", "predictors")
#: the sample sizes N of the stability stage (two disjoint sets of N examples per task)
STABILITY_SIZES = (8, 16, 32, 64)


def run_groundtruth(plan: TransferPlan, study: str | Path, stages=STAGES[:3], out: str | Path | None = None,
                    projector: str | Path | None = None, targets: list[str] | None = None,
                    stability_sizes=STABILITY_SIZES, backbone=None) -> dict:
    """Run ``stages`` of ``plan`` against ``study``; returns ``{"out", "quality", "stability", "drawn"}``
    (the quality table and the stability result when those stages ran, else None).

    ``out`` defaults to ``STUDY/groundtruth/<plan name>``; ``projector`` to the study's backbone;
    ``targets`` limits which targets' rows are made (every task stays a source). Raises a one-line
    ``ValueError`` when a plan task has no expert in the study, or ``out`` holds a ground truth made
    with another backbone or other experts."""
    from pitune_core.study.manifest import register_files  # lazy: `pitune --help` does not load it
    from pitune_core.study.transfer import quality_table, run_plan_pairs, run_predictors, shard_from_env  # lazy: loads torch

    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise ValueError(f"unknown ground-truth stage(s) {', '.join(bad)}; choose from {', '.join(STAGES)}")
    study = Path(study)
    sp = StudyPaths(study)
    out = Path(out) if out else sp.groundtruth(plan.name)
    root = sp.experts_of(plan.method)
    dirs = {t: root / t for t in plan.tasks}
    missing = [t for t, d in dirs.items() if not (d / EXPERT_META_FILE).exists()]
    if missing:
        raise ValueError(f"no {plan.method} expert for {', '.join(missing)} in {root}; train them first")
    projector = Path(projector or sp.backbone)
    if {"pairs", "predictors", "stability"} & set(stages):
        _bind_context(out, dirs, projector)
    res = {"out": out, "quality": None, "stability": None, "drawn": [], "relatedness": None}
    bb = backbone
    if bb is None and {"pairs", "predictors", "stability"} & set(stages):
        from pitune_core.model.backbone import UnifiedBackbone  # lazy: loads torch

        bb = UnifiedBackbone.load(projector)
    if "pairs" in stages:
        from pitune_core.study.sources import admitted_experts  # lazy: loads torch

        admitted, gated = admitted_experts(dirs)
        for name, why in sorted(gated.items()):
            print(f"pitune: {name} is a target only, never a source: {why}", file=sys.stderr)
        with _ticker(study, out, "transfer pairs", "pair", lambda j: f"{j[0]} <- {j[1]} (seed {j[2]})") as tick:
            run_plan_pairs(plan, dirs, bb, out, on_pair=tick, targets=targets,
                           sources=None if not gated else sorted(admitted))
    if "predictors" in stages and plan.predictors:
        from pitune_core.predict.predictors import PredictorContext  # lazy: loads torch

        # the source side's cache is keyed by expert file, backbone and settings: shared, outside the study
        ctx = PredictorContext(bb, dirs, method=plan.method, steps=plan.steps, batch_size=plan.batch_size,
                               fisher_n=plan.fisher_n, cache_dir=cache_dir() / "predictors")
        with _ticker(study, out, "predictor rows", "target",
                     lambda j: f"{j[0]} at {j[1] or 'full'} shots (seed {j[2]})") as tick:
            run_predictors(plan, ctx, out, on_row=tick, targets=targets)
        if shard_from_env() is None and out.resolve().is_relative_to(study.resolve()):
            _ship_source_side(plan, ctx, study)
    if "stability" in stages and shard_from_env() is None:
        res["stability"] = _stability(plan, dirs, bb, out, tuple(stability_sizes))
    if "quality" in stages:
        # the predictors that learn from measured transfer are scored beside every plan that scores
        # predictors (they need those predictors' rows as features); a plan may also list them itself
        res["quality"] = quality_table(plan, out, learned_names=LEARNED_PREDICTOR_NAMES if plan.predictors else None)
        if out.resolve().is_relative_to(study.resolve()):  # a ground truth of this study: draw its predictors
            from pitune_core.study.predictor_graphs import write_predictor_graphs  # lazy: loads torch

            res["drawn"] = write_predictor_graphs(plan, out, study)
            drawn_dirs = [sp.embedding_dir(plan.method, PREDICTOR_PREFIX + p) for p in res["drawn"]]
            register_files(study, [f for d in drawn_dirs for f in sorted(d.iterdir()) if f.is_file()])
    if "relatedness" in stages:
        from pitune_core.study.relatedness import run_relatedness  # lazy: loads numpy (the CLI imports this module)

        res["relatedness"] = run_relatedness(plan, out)
    _register(study, out)
    return res


def _ship_source_side(plan: TransferPlan, ctx, study: Path) -> list[Path]:
    """Ship the predictors' source-side rows with the study (``predict/<method>/source-side/``, listed
    in its manifest) for every expert of the study, not only the plan's tasks: a run or a placement
    ranks all of them, and none of their source side is then recomputed on a user's machine."""
    from pitune_core.study.manifest import register_files  # lazy: `pitune --help` does not load it
    from pitune_core.predict.predictors import ship_source_side  # lazy: loads torch

    sp = StudyPaths(study)
    root = sp.experts_of(plan.method)
    everyone = {d.name: d for d in sorted(root.iterdir()) if (d / EXPERT_META_FILE).is_file()}
    ctx.experts = {**everyone, **ctx.experts}
    folder = sp.source_side(plan.method)
    bar = progress(desc="source-side rows shipped with the study", unit="row")

    def tick(i, n, source):
        bar.total = n
        bar.update(1)
        bar.set_postfix_str(source)

    try:
        files = ship_source_side(plan.predictors, ctx, folder, on_source=tick)
    finally:
        bar.close()
    register_files(study, files)
    return files


@contextmanager
def _ticker(study: Path, out: Path, desc: str, unit: str, describe):
    """A progress bar whose callback ``(i, n, job)`` also lists the files written so far in the
    study's manifest (a stage stopped part way still verifies)."""
    bar = progress(desc=desc, unit=unit)

    def tick(i, n, job):
        _register(study, out)
        bar.total = n
        bar.update(1)
        bar.set_postfix_str(describe(job))

    try:
        yield tick
    finally:
        bar.close()


def _stability(plan: TransferPlan, dirs: dict, bb, out: Path, sizes: tuple[int, ...]) -> dict:
    """Fisher top-k stability from disjoint samples; kept when the file holds the same sizes and k."""
    from pitune_core.predict.predictors import fisher_stability  # lazy: loads torch

    f = out / "fisher_stability.json"
    if f.is_file():
        try:
            old = json.loads(f.read_text())
        except json.JSONDecodeError:
            old = {}
        if isinstance(old, dict) and old.get("k") == plan.k and sorted(old.get("sizes", {})) == sorted(map(str, sizes)):
            return old
    res = fisher_stability(dirs, bb, sizes=sizes, k=plan.k)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(f, json.dumps(res, indent=2))
    return res


def _bind_context(out: Path, dirs: dict, backbone_dir) -> None:
    """Bind ``out`` to the backbone and the source experts its pairs are made with (``context.json``):
    the pairs' keys name the budget only, so resuming into a folder made with another projector or
    other experts would silently mix two ground truths. Refused instead."""
    from pitune_core.data.tasks import DATA_VERSION  # lazy: loads safetensors
    from pitune_core.model.backbone import projector_id  # lazy: loads torch

    ctx = {"backbone_id": projector_id(backbone_dir), "data_version": DATA_VERSION,
           "experts": {t: sha256_file(Path(d) / "adapter_model.safetensors")[:16] for t, d in sorted(dirs.items())}}
    f = out / "context.json"
    if f.is_file():
        old = json.loads(f.read_text())
        same = old.get("backbone_id") == ctx["backbone_id"] and old.get("data_version") == ctx["data_version"]
        changed = sorted(t for t, h in ctx["experts"].items() if t in old.get("experts", {}) and old["experts"][t] != h)
        if not same or changed:
            raise ValueError(f"{out} holds a ground truth made with another "
                             + ("backbone or data version" if not same else f"expert for {', '.join(changed)}")
                             + "; give another --out")
        ctx["experts"] = {**old.get("experts", {}), **ctx["experts"]}
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(f, json.dumps(ctx, indent=1, sort_keys=True))  # shards bind at once: never a torn file


def supersede_source(out: str | Path, task: str) -> int:
    """Retire the pairs a ground truth measured with ``task``'s expert as the source, after that expert was
    retrained (issue 27's probe rule): its rows move from ``pairs.jsonl`` to ``pairs-superseded.jsonl``
    (kept, for the record) and its binding leaves ``context.json``, so the next run measures those pairs
    again with the new expert instead of refusing the folder. Returns how many rows moved."""
    out = Path(out)
    log, ctx_file = out / "pairs.jsonl", out / "context.json"
    rows = read_jsonl(log) if log.is_file() else []
    moved = [r for r in rows if r.get("source") == task]
    if moved:
        with open(out / "pairs-superseded.jsonl", "a", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in moved)
        write_atomic(log, "".join(json.dumps(r) + "\n" for r in rows if r.get("source") != task))
    if ctx_file.is_file():
        ctx = json.loads(ctx_file.read_text())
        ctx.get("experts", {}).pop(task, None)
        write_atomic(ctx_file, json.dumps(ctx, indent=1, sort_keys=True))
    return len(moved)


def _register(study: Path, out: Path) -> None:
    """List what was written in the study's manifest (when ``out`` lies inside the study), so the
    study keeps verifying while its ground truth grows."""
    from pitune_core.study.manifest import register_files  # lazy: `pitune --help` does not load it

    if out.is_dir():
        register_files(study, [p for p in sorted(out.rglob("*")) if p.is_file()])
