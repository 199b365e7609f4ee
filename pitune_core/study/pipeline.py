"""``pitune precompute``: the project's whole study, end to end, resumable; ``pitune verify``.

Stages (each with a progress bar, each resumable):

1. ``backbone`` — align the projector (or reuse a given one)
2. ``experts`` — one LoRA expert per task; prompt-tuning and IA3 experts on a subset
3. ``ablation`` — vision-language experts re-scored with images blanked
4. ``embeddings`` — Fisher (N and 2N, for stability), weights and data-only embeddings
5. ``predict`` — similarity matrices, task graphs with communities, 2-D layouts
6. ``transfer`` — the pairwise transfer matrix and how well each embedding predicts it
7. ``compare`` — π-Tuning against the baselines, few-shot and full-shot
8. ``manifest.json`` — command, seeds, versions, hardware, times, sha256 of every file

A stage whose recorded output checksums verify is skipped; inside stages, finished experts and
transfer pairs are kept, so a killed run picks up where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path


from pitune_core.common import progress, sha256_file
from pitune_core.study.compare import run_compare
from pitune_core.study.manifest import write_manifest
from pitune_core.study.outputs import (_predict_outputs, _write_csv, _write_expert_summary, expert_dir,
                                       fisher_stability, write_transfer_outputs)
from pitune_core.study.plan import EMBEDDINGS, STAGES, StudyPlan
from pitune_core.study.stages import Stages

# ----------------------------------------------------------------------------- the pipeline

def _say(msg: str) -> None:
    print(f"[pitune precompute] {msg}", file=sys.stderr, flush=True)


def _expert_ok(path: Path, backbone_id: str, seed: int, max_steps: int) -> bool:
    from pitune_core.model.experts import ExpertError, read_expert_meta

    try:
        meta = read_expert_meta(path)
    except ExpertError:
        return False
    return (meta["backbone_id"] == backbone_id and meta["seed"] == seed
            and meta["train_config"]["max_steps"] == max_steps)


def run_precompute(out: str | Path, plan: StudyPlan, projector: str | Path | None = None,
                   command: str = "", only: list[str] | None = None) -> dict:
    from pitune_core.model.align import AlignConfig, train_projector
    from pitune_core.model.backbone import UnifiedBackbone, find_projector
    from pitune_core.model.device import configure_threads, default_device

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    configure_threads()
    stages = Stages(root)

    def stage_hash(name: str) -> str:
        """Hash of the plan fields a stage depends on (changing compare settings must not retrain experts)."""
        fields = {"backbone": ["align_pairs_per_task", "align_epochs", "seed"],
                  "experts": ["tasks", "extra_methods", "expert_max_steps", "seed"],
                  "ablation": ["tasks"], "embeddings": ["tasks", "extra_methods", "fisher_n", "seed"],
                  "predict": ["tasks", "extra_methods"],
                  "transfer": ["transfer_tasks", "transfer_shots", "transfer_steps", "transfer_seeds", "k"],
                  "compare": ["compare_targets", "compare_shots", "compare_seeds", "compare_approaches",
                              "compare_full_shot_approaches", "compare_full_shot_seeds", "k"]}[name]
        d = asdict(plan)
        blob = json.dumps({f: d[f] for f in fields}, sort_keys=True, default=str)
        if name == "backbone":
            blob += f"|projector={projector}"
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    device = default_device()
    want = set(only or STAGES)

    from pitune_core.study.transfer import shard_from_env

    def stage(name, subs, fn):
        if name not in want:
            return
        if stages.done(name, stage_hash(name)):
            _say(f"{name}: up to date (checksums verified), skipped")
            return
        _say(f"{name}: running")
        t0 = time.time()
        fn()
        if shard_from_env():
            _say(f"{name}: shard {os.environ['PITUNE_SHARD']} done; run once without PITUNE_SHARD to finish the stage")
            return
        stages.finish(name, stage_hash(name), subs, round(time.time() - t0, 1))
        _say(f"{name}: done in {time.time() - t0:.0f}s")

    # 1. backbone -------------------------------------------------------------------------------
    def do_backbone():
        if projector is not None:
            src = find_projector(projector)
            (root / "backbone").mkdir(exist_ok=True)
            for f in ("projector.safetensors", "projector.json"):
                shutil.copy2(src / f, root / "backbone" / f)
        else:
            train_projector(out=root / "backbone", device=device,
                            cfg=AlignConfig(pairs_per_task=plan.align_pairs_per_task, epochs=plan.align_epochs,
                                            seed=plan.seed))

    stage("backbone", ["backbone"], do_backbone)
    bb = UnifiedBackbone.load(root / "backbone", device=device)
    from pitune_core.data.tasks import get_task

    (root / "tasks.json").write_text(json.dumps([get_task(t).info(get_task(t).load()) for t in plan.tasks], indent=1))

    # 2. experts --------------------------------------------------------------------------------
    methods = {"lora": plan.tasks, **plan.extra_methods}

    def do_experts():
        from pitune_core.model.experts import TrainConfig, train_expert

        jobs = [(m, t) for m, ts in methods.items() for t in ts]
        for m, t in progress(jobs, desc="experts"):
            d = expert_dir(root, m, t)
            if _expert_ok(d, bb.backbone_id, plan.seed, plan.expert_max_steps):
                continue
            train_expert(t, m, bb, seed=plan.seed, out=d,
                         train_config=TrainConfig(seed=plan.seed, max_steps=plan.expert_max_steps))
        _write_expert_summary(root, methods)

    stage("experts", ["experts"], do_experts)

    # 3. ablation -------------------------------------------------------------------------------
    def do_ablation():
        from pitune_core.model.experts import evaluate_expert

        rows = []
        for t in plan.tasks:
            if get_task(t).modality != "vision-language":
                continue
            d = expert_dir(root, "lora", t)
            full = evaluate_expert(d, bb)
            blank = evaluate_expert(d, bb, blank_images=True)
            rows.append({"task": t, "accuracy": full["accuracy"], "accuracy_images_blanked": blank["accuracy"]})
        _write_csv(root / "ablation" / "blank_images.csv", rows)

    stage("ablation", ["ablation"], do_ablation)

    # 4. embeddings -----------------------------------------------------------------------------
    def do_embeddings():
        from pitune_core.predict.embeddings import embed_experts, save_embeddings

        for m, ts in methods.items():
            dirs = {t: expert_dir(root, m, t) for t in ts}
            for kind in EMBEDDINGS:
                n = plan.fisher_n
                bar = progress(total=len(dirs), desc=f"{m}/{kind} embeddings")
                emb = embed_experts(dirs, kind, bb, n_samples=n, seed=plan.seed, on_task=lambda _t: bar.update(1))
                bar.close()
                save_embeddings(root / "predict" / m / kind / "embeddings.safetensors", emb)
            if m == "lora":  # stability of the Fisher neighbours: N vs 2N samples
                emb2 = embed_experts(dirs, "fisher", bb, n_samples=2 * plan.fisher_n, seed=plan.seed)
                save_embeddings(root / "predict" / m / "fisher_2n" / "embeddings.safetensors", emb2)

    stage("embeddings", ["predict"], do_embeddings)

    # 5. predict --------------------------------------------------------------------------------
    def do_predict():
        for m in methods:
            for kind in EMBEDDINGS:
                _predict_outputs(root, m, kind)
            if m == "lora":
                _predict_outputs(root, m, "fisher_2n")
                (root / "predict" / m / "fisher_stability.json").write_text(json.dumps(
                    fisher_stability(root / "predict" / m), indent=2))

    stage("predict", ["predict"], do_predict)

    # 6. transfer -------------------------------------------------------------------------------
    def do_transfer():
        from pitune_core.study.transfer import TransferBudget, run_pairs

        budget = TransferBudget(shots=plan.transfer_shots, steps=plan.transfer_steps, seeds=tuple(plan.transfer_seeds))
        dirs = {t: expert_dir(root, "lora", t) for t in plan.transfer_tasks}
        bar = progress(total=len(plan.transfer_tasks) ** 2 * len(budget.seeds), desc="transfer pairs")
        run_pairs(plan.transfer_tasks, dirs, "lora", bb, budget, root / "transfer",
                  on_pair=lambda i, n, job: (setattr(bar, "total", n), bar.update(1)))
        bar.close()
        write_transfer_outputs(root, plan.transfer_tasks, plan.k)

    stage("transfer", ["transfer"], do_transfer)

    # 7. compare --------------------------------------------------------------------------------
    def do_compare():
        run_compare(root, bb, plan)

    stage("compare", ["compare"], do_compare)

    # 8. manifest, then the human-readable report (whose checksum joins the manifest) ----------------
    manifest = write_manifest(root, plan, command, started, stages, str(device))
    from pitune_core.study.report import report

    (root / "REPORT.md").write_text(report(root))  # reads the manifest's times, so it comes second
    manifest["files"]["REPORT.md"] = sha256_file(root / "REPORT.md")
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str))
    return manifest


