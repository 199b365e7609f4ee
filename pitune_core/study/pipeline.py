"""``pitune precompute``: the project's whole study, end to end, resumable.

Stages (each with a progress bar, each resumable):

1. ``backbone`` — align the projector (or reuse a given one)
2. ``experts`` — one LoRA expert per task; prompt-tuning and IA3 experts on a subset
3. ``ablation`` — vision-language experts re-scored with images blanked
4. ``embeddings`` — Fisher (N and 2N, for stability), weights and data-only embeddings
5. ``predict`` — similarity matrices, task graphs with communities, 2-D layouts
6. ``groundtruth`` — the committed transfer plan (``plans/transfer-v2.json``): every ordered pair's
   measured transfer over its seeds, every predictor's row at 4 / 16 shots and full data, their
   quality against the noise ceiling, Fisher stability from disjoint samples
   (:func:`pitune_core.study.groundtruth.run_groundtruth`, the same as ``pitune transfer-study``)
7. ``protocol`` — the pre-registered few-shot comparison (``plans/few-shot-v2.json``): every planned
   run of π-Tuning, its ablations and the baselines, then ``results.csv`` / ``report.md`` with the
   paired statistics (the same as ``pitune study run`` + ``status``)
8. ``manifest.json`` — command, plan files and their sha256, seeds, versions, hardware, times, sha256
   of every file; then ``REPORT.md``

A stage whose recorded output checksums verify is skipped; inside stages, finished experts, transfer
pairs, predictor rows and protocol runs are kept, so a killed run picks up where it stopped, and
``PITUNE_SHARD=i/n`` shares the last two stages' jobs between processes (run once more without it
to finish them). The pipeline ends the way the project's old ``transfer`` / ``compare`` stages
could not: target-side information comes only from the data each run has (issue 11).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from pitune_core.common import progress, sha256_file
from pitune_core.paths import StudyPaths, plan_path
from pitune_core.spec.env import shard_from_env, shard_label
from pitune_core.study.manifest import write_manifest
from pitune_core.study.outputs import (
    _predict_outputs,
    _write_csv,
    _write_expert_summary,
    expert_dir,
    fisher_stability,
)
from pitune_core.study.plan import EMBEDDINGS, STAGES, StudyPlan
from pitune_core.study.stages import Stages
from pitune_core.data.tasks import get_task
from pitune_core.study.groundtruth import run_groundtruth
from pitune_core.study.protocol import load_plan as load_protocol_plan, run_plan, write_results_of
from pitune_core.study.report import report

# ----------------------------------------------------------------------------- the pipeline

def _say(msg: str) -> None:
    print(f"[pitune precompute] {msg}", file=sys.stderr, flush=True)


def _expert_ok(path: Path, backbone_id: str, seed: int, max_steps: int) -> bool:
    from pitune_core.model.experts import ExpertError, read_expert_meta  # lazy: loads torch

    try:
        meta = read_expert_meta(path)
    except ExpertError:
        return False
    from pitune_core.study.recipes import SECOND_RECIPE, second_recipe_steps  # lazy: loads torch

    steps = meta["train_config"]["max_steps"]
    second = meta.get("recipe", {}).get("name") == SECOND_RECIPE["name"]
    return (meta["backbone_id"] == backbone_id and meta["seed"] == seed
            and steps == (second_recipe_steps(max_steps) if second else max_steps))


#: the plan fields each stage depends on (changing compare settings must not retrain experts)
STAGE_FIELDS = {
    "backbone": ["align_pairs_per_task", "align_epochs", "seed"],
    "experts": ["tasks", "extra_methods", "expert_max_steps", "seed"],
    "ablation": ["tasks"],
    "embeddings": ["tasks", "extra_methods", "fisher_n", "seed"],
    "predict": ["tasks", "extra_methods"],
    "groundtruth": ["groundtruth_plan", "stability_sizes"],
    "protocol": ["protocol_plan"],
}
#: the plan-file field each measurement stage reads (the file's bytes join the stage's hash)
PLAN_FILE_FIELD = {"groundtruth": "groundtruth_plan", "protocol": "protocol_plan"}


@dataclass
class StudyRun:
    """What every stage of one ``pitune precompute`` invocation works with."""

    root: Path
    plan: StudyPlan
    projector: str | Path | None
    device: object
    bb: object = None  # the backbone, loaded after the backbone stage

    @property
    def paths(self) -> StudyPaths:
        return StudyPaths(self.root)

    @property
    def methods(self) -> dict[str, list[str]]:
        """Expert type -> tasks that get an expert of that type."""
        return {"lora": self.plan.tasks, **self.plan.extra_methods}

    def stage_hash(self, name: str) -> str:
        d = asdict(self.plan)
        blob = json.dumps({f: d[f] for f in STAGE_FIELDS[name]}, sort_keys=True, default=str)
        if name == "backbone":
            blob += f"|projector={self.projector}"
        if name in PLAN_FILE_FIELD and d[PLAN_FILE_FIELD[name]]:
            blob += "|plan=" + sha256_file(plan_path(d[PLAN_FILE_FIELD[name]]))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def stage_backbone(run: StudyRun) -> None:
    """Copy a given projector, or align a new one (``pitune align``)."""
    from pitune_core.model.align import AlignConfig, train_projector  # lazy: loads torch
    from pitune_core.model.backbone import PROJECTOR_FILE, PROJECTOR_META, find_projector  # lazy: loads torch

    if run.projector is not None:
        src = find_projector(run.projector)
        run.paths.backbone.mkdir(exist_ok=True)
        for f in (PROJECTOR_FILE, PROJECTOR_META):
            shutil.copy2(src / f, run.paths.backbone / f)
    else:
        plan = run.plan
        train_projector(out=run.paths.backbone, device=run.device,
                        cfg=AlignConfig(pairs_per_task=plan.align_pairs_per_task, epochs=plan.align_epochs,
                                        seed=plan.seed))


def stage_experts(run: StudyRun) -> None:
    """One expert per (expert type, task); finished experts of the same budget are kept. A vision LoRA
    expert that misses the probe bar on val gets a second recipe (:mod:`pitune_core.study.recipes`)."""
    from pitune_core.model.experts import TrainConfig, train_expert  # lazy: loads torch
    from pitune_core.study.recipes import apply_probe_rule  # lazy: loads torch

    plan = run.plan
    jobs = [(m, t) for m, ts in run.methods.items() for t in ts]
    for m, t in progress(jobs, desc="experts"):
        d = expert_dir(run.root, m, t)
        if not _expert_ok(d, run.bb.backbone_id, plan.seed, plan.expert_max_steps):
            train_expert(t, m, run.bb, seed=plan.seed, out=d,
                         train_config=TrainConfig(seed=plan.seed, max_steps=plan.expert_max_steps))
        if m == "lora" and get_task(t).modality == "vision":
            apply_probe_rule(d, run.bb, plan.expert_max_steps)  # records its decision once
    _write_expert_summary(run.root, run.methods)


def stage_ablation(run: StudyRun) -> None:
    """The image pathway's checks: vision-language experts re-scored with every image blanked, and the
    reference for vision experts: a linear probe on the frozen image features each expert reads."""
    from pitune_core.model.experts import evaluate_expert, linear_probe  # lazy: loads torch

    rows, probes = [], []
    for t in run.plan.tasks:
        spec = get_task(t)
        if spec.modality == "vision":
            probes.append({"task": t, "metric": spec.metric, **linear_probe(spec, run.bb)})
        if spec.modality != "vision-language":
            continue
        d = expert_dir(run.root, "lora", t)
        full = evaluate_expert(d, run.bb)
        blank = evaluate_expert(d, run.bb, blank_images=True)
        rows.append({"task": t, "accuracy": full["accuracy"], "accuracy_images_blanked": blank["accuracy"],
                     "metric": spec.metric, "score": full[spec.metric], "score_images_blanked": blank[spec.metric]})
    _write_csv(run.paths.blank_images, rows)
    if probes:
        _write_csv(run.paths.linear_probe, probes)


def stage_embeddings(run: StudyRun) -> None:
    """Fisher / weights / data embeddings of every expert type; Fisher with 2N samples for LoRA."""
    from pitune_core.predict.embeddings import embed_experts, save_embeddings  # lazy: loads torch

    plan = run.plan
    for m, ts in run.methods.items():
        dirs = {t: expert_dir(run.root, m, t) for t in ts}
        for kind in EMBEDDINGS:
            bar = progress(total=len(dirs), desc=f"{m}/{kind} embeddings")
            emb = embed_experts(dirs, kind, run.bb, n_samples=plan.fisher_n, seed=plan.seed,
                                on_task=lambda _t: bar.update(1))
            bar.close()
            save_embeddings(run.paths.embeddings_file(m, kind), emb)
        if m == "lora":  # stability of the Fisher neighbours: N vs 2N samples
            emb2 = embed_experts(dirs, "fisher", run.bb, n_samples=2 * plan.fisher_n, seed=plan.seed)
            save_embeddings(run.paths.embeddings_file(m, "fisher_2n"), emb2)


def stage_predict(run: StudyRun) -> None:
    """Similarity matrices, task graphs with communities, 2-D layouts; Fisher stability."""
    for m in run.methods:
        for kind in EMBEDDINGS:
            _predict_outputs(run.root, m, kind)
        if m == "lora":
            _predict_outputs(run.root, m, "fisher_2n")
            run.paths.fisher_stability(m).write_text(json.dumps(fisher_stability(run.paths.predict_of(m)), indent=2))


def stage_groundtruth(run: StudyRun) -> None:
    """The committed transfer plan: pairs, predictor rows, then (unsharded) quality and stability."""
    from pitune_core.study.transfer import load_plan  # lazy: loads torch

    if not run.plan.groundtruth_plan:
        _say("groundtruth: no plan file in the study plan, nothing to measure")
        return
    plan = load_plan(plan_path(run.plan.groundtruth_plan))
    unsharded = ((("quality", "stability") if plan.predictors else ()) + ("relatedness",)) if shard_from_env() is None else ()
    stages = ("pairs", "predictors") + unsharded
    run_groundtruth(plan, run.root, stages, projector=run.paths.backbone, stability_sizes=run.plan.stability_sizes,
                    backbone=run.bb)


def stage_protocol(run: StudyRun) -> None:
    """The pre-registered few-shot comparison: every planned run, then (unsharded) its results."""
    if not run.plan.protocol_plan:
        _say("protocol: no plan file in the study plan, nothing to compare")
        return
    plan = load_protocol_plan(plan_path(run.plan.protocol_plan))
    out = run.paths.protocol(plan.name)
    res = run_plan(plan, run.root, out, backbone=run.bb,
                   on_run=lambda i, n, rec: _say(f"protocol [{i}/{n}] {rec['job']['target']} {rec['job']['approach']} "
                                                 f"shots={rec['job']['shots']} seed={rec['job']['seed']}: {rec['status']}"))
    if shard_from_env() is None:
        write_results_of(plan, run.root, out)
    if res["failed"]:
        raise RuntimeError(f"protocol: {res['failed']} run(s) failed (logged in {res['log']}); "
                           "run `pitune precompute` again to retry them")


#: stage name -> (the study sub-folders it writes, the function); in execution order
STAGE_FUNCTIONS = {
    "backbone": (["backbone"], stage_backbone),
    "experts": (["experts"], stage_experts),
    "ablation": (["ablation"], stage_ablation),
    "embeddings": (["predict"], stage_embeddings),
    "predict": (["predict"], stage_predict),
    "groundtruth": (["groundtruth", "predict"], stage_groundtruth),
    "protocol": (["protocol"], stage_protocol),
}
assert tuple(STAGE_FUNCTIONS) == STAGES


def _run_stage(run: StudyRun, stages: Stages, name: str) -> None:

    subs, fn = STAGE_FUNCTIONS[name]
    h = run.stage_hash(name)
    if stages.done(name, h):
        _say(f"{name}: up to date (checksums verified), skipped")
        return
    _say(f"{name}: running")
    t0 = time.time()
    fn(run)
    if shard_from_env():
        _say(f"{name}: shard {shard_label()} done; run once without PITUNE_SHARD to finish the stage")
        return
    stages.finish(name, h, subs, round(time.time() - t0, 1))
    _say(f"{name}: done in {time.time() - t0:.0f}s")


def run_precompute(out: str | Path, plan: StudyPlan, projector: str | Path | None = None,
                   command: str = "", only: list[str] | None = None) -> dict:
    """Run the study's stages (all, or ``only`` these) into ``out``; write the manifest and REPORT.md."""
    from pitune_core.model.backbone import UnifiedBackbone  # lazy: loads torch
    from pitune_core.model.device import configure_threads, default_device  # lazy: loads torch

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    configure_threads()
    stages = Stages(root)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    run = StudyRun(root=root, plan=plan, projector=projector, device=default_device())
    want = set(only or STAGES)
    for name in STAGES:
        if name in want:
            _run_stage(run, stages, name)
        if name == "backbone":  # every later stage needs the backbone and the task list
            run.bb = UnifiedBackbone.load(run.paths.backbone, device=run.device)
            run.paths.tasks_json.write_text(json.dumps([get_task(t).info(get_task(t).load()) for t in plan.tasks],
                                                       indent=1))
    # the manifest, then the human-readable report (whose checksum joins the manifest)
    manifest = write_manifest(root, plan, command, started, stages, str(run.device))
    run.paths.report.write_text(report(root))  # reads the manifest's times, so it comes second
    manifest["files"]["REPORT.md"] = sha256_file(run.paths.report)
    run.paths.manifest.write_text(json.dumps(manifest, indent=1, default=str))
    return manifest
