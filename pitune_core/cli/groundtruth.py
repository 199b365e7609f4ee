"""CLI for the ground-truth transfer study and the predictors: ``pitune transfer-study PLAN``.

One plan file (``plans/transfer-v2.json``) fixes everything; the command runs its stages
(``pairs``: the measured transfer of every ordered pair, ``predictors``: every predictor's row at
every target data size, ``quality``: reliability + the predictor x data-size table; ``stability``,
run on request only: Fisher top-k stability from disjoint samples). Each stage
appends to a log in ``--out`` and resumes where it stopped; ``PITUNE_SHARD=i/n`` splits the pairs
and predictor rows across processes (run ``--stage quality`` once all shards are done), and
``--workers N|auto`` does that for you: the pairs and predictor stages in N single-thread processes
(``auto``: one per core on CPU), then quality in this one (:mod:`pitune_core.cli.workers`).
"""

from __future__ import annotations

import json
import sys

from pitune_core.cli import workers
from pitune_core.cli.options import add_study, add_workers, study_of
from pitune_core.common import parse_int_list
from pitune_core.paths import StudyPaths
from pitune_core.spec.vocab import PREDICTOR_PREFIX
from pitune_core.study.groundtruth import SHARDABLE, STABILITY_SIZES, STAGES, run_groundtruth


def cmd_transfer_study(args) -> int:
    from pitune_core.model.device import configure_threads  # lazy: loads torch
    from pitune_core.study.transfer import load_plan  # lazy: loads torch

    plan = load_plan(args.plan)
    if args.tasks:
        plan.tasks = [t for t in plan.tasks if t in set(args.tasks)]
    bad = [t for t in args.targets or [] if t not in (plan.targets or plan.tasks)]
    if bad:
        raise ValueError(f"--targets {', '.join(bad)} not among the plan's targets")
    if args.seeds:
        plan.seeds = tuple(parse_int_list(args.seeds, "seeds"))
        plan.predictor_seeds = tuple(s for s in plan.predictor_seeds if s in plan.seeds) or plan.seeds[:1]
    if args.predictors:
        plan.predictors = list(args.predictors)
    stages = STAGES[:3] if args.stage == "all" else (args.stage,)
    study = study_of(args)
    n = workers.resolve(args.workers)
    if n > 1:  # the shardable stages in n worker processes; then this process resumes, finds them done
        for stage in (s for s in stages if s in SHARDABLE and (s != "predictors" or plan.predictors)):
            workers.run_sharded(workers.with_option(args.argv, "--stage", stage), n, what=f"{stage} stage")
    configure_threads()
    res = run_groundtruth(plan, study, stages, out=args.out, projector=args.projector,
                          targets=args.targets, stability_sizes=args.stability_sizes)
    out = res["out"]
    if res["stability"] is not None:
        st = res["stability"]
        print(f"Fisher top-{plan.k} stability (disjoint samples): " + ", ".join(
            f"N={n}: {v['mean_topk_overlap']:.2f}" for n, v in st["sizes"].items() if "mean_topk_overlap" in v)
            + f"; stable from N={st['samples_for_stable_topk']}")
    if res["quality"] is not None:
        rel = res["quality"]["reliability"]
        print(f"reliability ({rel['n_seeds']} seeds): split-half Spearman {rel['mean']['r_half']:.3f}, "
              f"Spearman-Brown {rel['mean']['reliability']:.3f}, Spearman ceiling {rel['mean']['ceiling_spearman']:.3f}")
        for label, preds in res["quality"]["table"].items():
            for p, v in sorted(preds.items(), key=lambda kv: -kv[1]["summary"]["spearman"]["mean"]):
                s = v["summary"]
                print(f"  {label:8s} {p:16s} spearman {s['spearman']['mean']:+.3f} "
                      f"[{s['spearman']['ci'][0]:+.3f}, {s['spearman']['ci'][1]:+.3f}] "
                      f"({s['spearman']['fraction_of_ceiling']:.0%} of ceiling)  top-{plan.k} {s[f'top{plan.k}_hit']['mean']:.2f}  "
                      f"regret {s['regret']['mean']:.2f}  {v['seconds_per_target']:.1f} s/target")
        print(f"quality -> {out / 'quality.json'}", file=sys.stderr)
        if res["drawn"]:
            print(f"predictor graphs (full-data rows) -> {StudyPaths(study).predict_of(plan.method)}/"
                  f"{PREDICTOR_PREFIX}{{{','.join(res['drawn'])}}}", file=sys.stderr)
    if res["relatedness"] is not None:
        from pitune_core.study.relatedness import RESULT_FILE, markdown  # lazy: loads numpy (keeps `pitune --help` fast)

        print("\n".join(markdown(res["relatedness"])))
        print(f"relatedness -> {out / RESULT_FILE}", file=sys.stderr)
    if "quality" not in stages and res["relatedness"] is None and not args.quiet:
        print(json.dumps({"out": str(out), "stages": list(stages), "key": plan.key()}))
    return 0


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
    sp.add_argument("--stability-sizes", type=int, nargs="*", default=list(STABILITY_SIZES),
                    help="sample sizes N of the stability stage (two disjoint sets of N per task)")
    add_workers(sp)
    sp.add_argument("--quiet", action="store_true")
