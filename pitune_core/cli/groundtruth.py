"""CLI for the ground-truth transfer study and the predictors: ``pitune transfer-study PLAN``.

One plan file (``plans/transfer-v2.json``) fixes everything; the command runs its stages
(``pairs``: the measured transfer of every ordered pair, ``predictors``: every predictor's row at
every target data size, ``quality``: reliability + the predictor x data-size table; ``stability``,
run on request only: Fisher top-k stability from disjoint samples). Each stage
appends to a log in ``--out`` and resumes where it stopped; ``PITUNE_SHARD=i/n`` splits the pairs
and predictor rows across processes (run ``--stage quality`` once all shards are done).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pitune_core.cli.options import add_study, study_of
from pitune_core.common import progress, write_atomic
from pitune_core.paths import StudyPaths

STAGES = ("pairs", "predictors", "quality", "stability")


def cmd_transfer_study(args) -> int:
    from pitune_core.study.transfer import (
        load_plan,
        quality_table,
        run_plan_pairs,
        run_predictors,
    )

    plan = load_plan(args.plan)
    if args.tasks:
        plan.tasks = [t for t in plan.tasks if t in set(args.tasks)]
    bad = [t for t in args.targets or [] if t not in (plan.targets or plan.tasks)]
    if bad:
        raise ValueError(f"--targets {', '.join(bad)} not among the plan's targets")
    if args.seeds:
        from pitune_core.common import parse_int_list

        plan.seeds = tuple(parse_int_list(args.seeds, "seeds"))
        plan.predictor_seeds = tuple(s for s in plan.predictor_seeds if s in plan.seeds) or plan.seeds[:1]
    if args.predictors:
        plan.predictors = list(args.predictors)
    stages = STAGES[:3] if args.stage == "all" else (args.stage,)
    study = Path(study_of(args))
    sp = StudyPaths(study)
    out = Path(args.out) if args.out else sp.groundtruth(plan.name)
    root = sp.experts_of(plan.method)
    dirs = {t: root / t for t in plan.tasks}
    missing = [t for t, d in dirs.items() if not (d / "pitune_expert.json").exists()]
    if missing:
        raise ValueError(f"no {plan.method} expert for {', '.join(missing)} in {root}; train them first")
    if "pairs" in stages or "predictors" in stages:
        _bind_context(out, dirs, Path(args.projector or sp.backbone))
    bb = None
    if "pairs" in stages or "predictors" in stages or "stability" in stages:
        from pitune_core.model.backbone import UnifiedBackbone

        bb = UnifiedBackbone.load(args.projector or sp.backbone)
    if "pairs" in stages:
        bar = progress(desc="transfer pairs", unit="pair")

        def on_pair(i, n, job):
            _register(study, out)
            bar.total = n
            bar.update(1)
            bar.set_postfix_str(f"{job[0]} <- {job[1]} (seed {job[2]})")

        run_plan_pairs(plan, dirs, bb, out, on_pair=on_pair, targets=args.targets)
        bar.close()
    if "predictors" in stages and plan.predictors:
        from pitune_core.predict.predictors import PredictorContext

        from pitune_core.paths import cache_dir

        # the source side's cache is keyed by expert file, backbone and settings: shared, outside the study
        ctx = PredictorContext(bb, dirs, method=plan.method, steps=plan.steps, batch_size=plan.batch_size,
                               fisher_n=plan.fisher_n, cache_dir=cache_dir() / "predictors")
        bar = progress(desc="predictor rows", unit="target")

        def on_row(i, n, job):
            _register(study, out)
            bar.total = n
            bar.update(1)
            bar.set_postfix_str(f"{job[0]} at {job[1] or 'full'} shots (seed {job[2]})")

        run_predictors(plan, ctx, out, on_row=on_row, targets=args.targets)
        bar.close()
    if "stability" in stages:
        from pitune_core.predict.predictors import fisher_stability

        res = fisher_stability(dirs, bb, sizes=tuple(args.stability_sizes), k=plan.k)
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / "fisher_stability.json", json.dumps(res, indent=2))
        print(f"Fisher top-{plan.k} stability (disjoint samples): " + ", ".join(
            f"N={n}: {v['mean_topk_overlap']:.2f}" for n, v in res["sizes"].items() if "mean_topk_overlap" in v)
            + f"; stable from N={res['samples_for_stable_topk']}")
    if "quality" in stages:
        res = quality_table(plan, out)
        rel = res["reliability"]
        print(f"reliability ({rel['n_seeds']} seeds): split-half Spearman {rel['mean']['r_half']:.3f}, "
              f"Spearman-Brown {rel['mean']['reliability']:.3f}, Spearman ceiling {rel['mean']['ceiling_spearman']:.3f}")
        for label, preds in res["table"].items():
            for p, v in sorted(preds.items(), key=lambda kv: -kv[1]["summary"]["spearman"]["mean"]):
                s = v["summary"]
                print(f"  {label:8s} {p:16s} spearman {s['spearman']['mean']:+.3f} "
                      f"[{s['spearman']['ci'][0]:+.3f}, {s['spearman']['ci'][1]:+.3f}] "
                      f"({s['spearman']['fraction_of_ceiling']:.0%} of ceiling)  top-{plan.k} {s[f'top{plan.k}_hit']['mean']:.2f}  "
                      f"regret {s['regret']['mean']:.2f}  {v['seconds_per_target']:.1f} s/target")
        print(f"quality -> {out / 'quality.json'}", file=sys.stderr)
        if out.resolve().is_relative_to(study.resolve()):  # a ground truth of this study: draw its predictors
            from pitune_core.predict.quality import PREDICTOR_PREFIX
            from pitune_core.study.manifest import register_files
            from pitune_core.study.predictor_graphs import write_predictor_graphs

            drawn = write_predictor_graphs(plan, out, study)
            dirs_drawn = [sp.embedding_dir(plan.method, PREDICTOR_PREFIX + p) for p in drawn]
            register_files(study, [f for d in dirs_drawn for f in sorted(d.iterdir()) if f.is_file()])
            if drawn:
                print(f"predictor graphs (full-data rows) -> {sp.predict_of(plan.method)}/{PREDICTOR_PREFIX}"
                      f"{{{','.join(drawn)}}}", file=sys.stderr)
    _register(study, out)
    if "quality" not in stages and not args.quiet:
        print(json.dumps({"out": str(out), "stages": list(stages), "key": plan.key()}))
    return 0


def _bind_context(out: Path, dirs: dict, backbone_dir) -> None:
    """Bind ``out`` to the backbone and the source experts its pairs are made with (``context.json``):
    the pairs' keys name the budget only, so resuming into a folder made with another projector or
    other experts would silently mix two ground truths. Refused instead."""
    from pitune_core.common import sha256_file
    from pitune_core.data.tasks import DATA_VERSION
    from pitune_core.model.backbone import projector_id

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


def _register(study: Path, out: Path) -> None:
    """List what this command wrote in the study's manifest (when ``out`` lies inside the study), so
    the study keeps verifying while its ground truth grows."""
    from pitune_core.study.manifest import register_files

    if out.is_dir():
        register_files(study, [p for p in sorted(out.rglob("*")) if p.is_file()])


def register(sub, add) -> None:
    sp = add("transfer-study", cmd_transfer_study,
             "ground-truth transfer study from a plan file: pairs, predictor rows, quality (resumable, PITUNE_SHARD)")
    sp.add_argument("plan", help="plan file, e.g. plans/transfer-v2.json")
    add_study(sp)
    sp.add_argument("--out", help="output directory (default: STUDY/groundtruth/PLAN_NAME)")
    sp.add_argument("--stage", default="all", choices=("all", *STAGES))
    sp.add_argument("--tasks", nargs="*", help="only these of the plan's tasks (as targets and sources)")
    sp.add_argument("--targets", nargs="*", help="only these targets' rows, every task still a source (a pilot)")
    sp.add_argument("--seeds", help="override the plan's seeds, e.g. 0,1 (a pilot)")
    sp.add_argument("--predictors", nargs="*", help="only these predictors")
    sp.add_argument("--projector")
    sp.add_argument("--stability-sizes", type=int, nargs="*", default=[8, 16, 32, 64],
                    help="sample sizes N of the stability stage (two disjoint sets of N per task)")
    sp.add_argument("--quiet", action="store_true")
