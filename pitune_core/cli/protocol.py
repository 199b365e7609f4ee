"""``pitune study run|status|plan``: the pre-registered few-shot protocol (:mod:`pitune_core.study.protocol`).

``run`` executes (or resumes) a committed plan against a study and logs every run keyed by its full
configuration; ``PITUNE_SHARD=i/n`` shares the jobs between processes, and ``--workers N|auto`` starts
N such processes itself (``auto``: one single-thread worker per core on CPU; :mod:`pitune_core.cli.workers`).
``status`` reports progress, the measured time per run and the extrapolated CPU time of the whole plan, and rewrites
``results.csv`` / ``report.md`` (every planned run, with its status). ``plan`` re-derives the
targets from the plan's stated rule and checks them against the file. ``draft`` writes the
protocol's plans before any of their runs (:mod:`pitune_core.study.preregister_protocol`): ``--pilot``
the pilot plan, else the main and confirmation plans from the pilot's results; it never overwrites a
file. ``recommend-check`` fixes the recommendation rule on a main set's results and evaluates it on a
confirmation set's (:mod:`pitune_core.study.read.recommend`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pitune_core.cli import workers
from pitune_core.cli.options import add_workers
from pitune_core.paths import StudyPaths


def _out(args, plan) -> str:
    if args.out is None:
        args.out = str(StudyPaths(args.study).protocol(plan.name))
    return args.out




def cmd_run(args) -> int:
    from pitune_core.model.device import configure_threads  # lazy: loads torch
    from pitune_core.study.protocol import load_plan, run_plan, write_results_of  # lazy: `pitune --help` does not load it
    from pitune_core.study.transfer import shard_from_env  # lazy: loads torch

    plan = load_plan(args.plan)
    _out(args, plan)
    if args.limit is not None or args.sample:  # both count the runs of one process
        if args.workers is not None and workers.resolve(args.workers) > 1:
            raise ValueError("--limit and --sample count the runs of one process: drop --workers")
        n = 1
    else:
        n = workers.resolve(args.workers)
    if n > 1:  # the plan's jobs in n worker processes; then this process resumes, finds them done, writes results
        workers.run_sharded(args.argv, n, what=f"plan {plan.name}")
    configure_threads()

    def on_run(i, n, rec):
        j = rec["job"]
        what = (f"{rec['result']['score']:.4f}" if rec["status"] == "done" else f"FAILED: {rec['error'].splitlines()[-1]}")
        print(f"[{i}/{n}] {j['target']} {j['approach']} shots={j['shots']} seed={j['seed']}: {what} "
              f"({rec['time_s']:.0f} s)", file=sys.stderr, flush=True)

    res = run_plan(plan, args.study, args.out, limit=args.limit, allow_unclean_alignment=args.allow_unclean_alignment,
                   on_run=on_run, sample=args.sample)
    if shard_from_env() is None:
        write_results_of(plan, args.study, args.out)
    print(json.dumps({k: v for k, v in res.items() if k != "alignment"}, indent=1))
    return 1 if res["failed"] else 0


def cmd_status(args) -> int:
    from pitune_core.study.protocol import estimate, load_plan, results_context, write_results  # lazy: `pitune --help` does not load it

    plan = load_plan(args.plan)
    _out(args, plan)
    context = results_context(plan, args.study)
    path = write_results(plan, args.out, context, study=args.study)
    est = estimate(plan, args.out, context)
    print(json.dumps({"results": str(path), **est}, indent=1))
    return 0


def cmd_plan(args) -> int:
    from pitune_core.study.protocol import load_plan, make_plan  # lazy: `pitune --help` does not load it

    plan = load_plan(args.plan)
    r = plan.rule
    summary = args.summary or r.get("summary", "precomputed/experts/summary.csv")
    again = make_plan(summary, plan.name, r.get("margin_points", 5.0), r.get("min_shots", 16), r.get("min_targets", 12))
    same = again.targets == plan.targets
    # the plan records the numbers its rule read: a summary with other numbers is another study's
    evidence_same = again.rule.get("evidence") == r.get("evidence")
    print(json.dumps({"plan": args.plan, "summary": str(summary), "targets": plan.targets, "rule_gives_same_targets": same,
                      "summary_matches_plan_evidence": evidence_same, "planned_runs": len(plan.jobs())}, indent=1))
    if not evidence_same:
        print(f"{summary} is not the summary this plan was made from (its numbers differ from the plan's recorded "
              "evidence); give that study's experts/summary.csv with --summary", file=sys.stderr)
    return 0 if same else 1


def cmd_draft(args) -> int:
    from pitune_core.study import preregister_protocol as P  # lazy: `pitune --help` does not load it

    if args.pilot:
        given = {k: v for k, v in (("per_modality", args.per_modality), ("draw_seed", args.draw_seed)) if v is not None}
        plan = P.draft_pilot(args.groundtruth, args.confirm, name=args.name or "protocol-v3-pilot", **given)
        path = P.write_new(args.out or f"plans/{plan.name}.json", plan)
        print(json.dumps({"written": str(path), "targets": plan.targets, "planned_runs": len(plan.jobs())}, indent=1))
        return 0
    if not (args.pilot_plan and args.pilot_results):
        raise ValueError("give --pilot (draft the pilot plan) or --pilot-plan and --pilot-results (draft the "
                         "main and confirmation plans from the pilot's results)")
    main, held, why = P.draft_plans(args.pilot_plan, args.pilot_results, name=args.name or "protocol-v3",
                                    groundtruth=args.groundtruth, confirm=args.confirm)
    out = args.out or f"plans/{main.name}.json"
    out_held = args.confirm_out or f"plans/{held.name}.json"
    taken = [p for p in (out, out_held) if Path(p).exists()]
    if taken:  # refuse before writing either
        raise P.PlanError(f"{', '.join(taken)} exist(s): a plan file is never overwritten (give another --out)")
    written = [str(P.write_new(out, main)), str(P.write_new(out_held, held))]
    print(P.json_ready({"written": written, **why}))
    return 0


def cmd_recommend_check(args) -> int:
    from pitune_core.study.read.evidence import read_protocol_csv  # lazy: `pitune --help` does not load it
    from pitune_core.study.read.recommend import check  # lazy: loads numpy (keeps pitune --help fast)

    res = check(read_protocol_csv(args.main), read_protocol_csv(args.confirm))
    print(json.dumps(res, indent=1, default=str))
    return 0


def register(sub, add) -> None:
    sp = add("study", None, "the pre-registered few-shot protocol: run a committed plan (resumable, shardable)")
    inner = sp.add_subparsers(dest="study_command", required=True, metavar="ACTION")
    for name, fn, help_ in (("run", cmd_run, "run or resume a plan against a study (PITUNE_SHARD=i/n shards it)"),
                            ("status", cmd_status, "progress, measured time per run, estimated CPU time; "
                                                   "rewrites results.csv and report.md"),
                            ("plan", cmd_plan, "check that a plan's targets follow from its stated rule")):
        p = inner.add_parser(name, help=help_, description=help_)
        p.set_defaults(func=fn)
        p.add_argument("--plan", required=True, help="plan file (e.g. plans/few-shot-v2.json)")
        if name != "plan":
            p.add_argument("--study", required=True, help="study with the source experts, embeddings and backbone")
            p.add_argument("--out", help="output directory (runs.jsonl, results.csv, report.md); "
                                         "default: STUDY/protocol/<plan name>")
        if name == "plan":
            p.add_argument("--summary", metavar="CSV", help="the experts' summary the rule reads (default: the one "
                                                            "the plan names; give the study it was made from when "
                                                            "that study has moved)")
        if name == "run":
            add_workers(p)
            p.add_argument("--limit", type=int, default=None, help="stop after this many new runs")
            p.add_argument("--sample", action="store_true",
                           help="run one job per (approach, shots) cell, full data first: to measure per-run times "
                                "for `pitune study status`'s CPU estimate")
            p.add_argument("--allow-unclean-alignment", action="store_true",
                           help="run even if the projector's alignment saw a target (smoke tests only)")
    p = inner.add_parser("draft", help="write the protocol's plans before any of their runs (never overwrites)",
                         description="--pilot: the pilot plan (targets drawn from the ground truth's main targets); "
                                     "else the main and confirmation plans, their seeds from the pilot's results by "
                                     "the stated power rule (pitune_core/study/preregister_protocol.py)")
    p.set_defaults(func=cmd_draft)
    p.add_argument("--pilot", action="store_true", help="draft the pilot plan")
    p.add_argument("--pilot-plan", metavar="FILE", help="the pilot plan whose results size the seeds")
    p.add_argument("--pilot-results", metavar="CSV", help="the pilot's results.csv (`pitune study status` writes it)")
    p.add_argument("--groundtruth", default="plans/groundtruth-v3.json", help="the ground truth's main plan")
    p.add_argument("--confirm", default="plans/groundtruth-v3-confirm.json", help="its confirmation plan")
    p.add_argument("--name", help="plan name (default protocol-v3-pilot / protocol-v3)")
    p.add_argument("--out", metavar="FILE", help="where the (pilot or main) plan goes (default plans/NAME.json)")
    p.add_argument("--confirm-out", metavar="FILE", help="where the confirmation plan goes (default plans/NAME-confirm.json)")
    p.add_argument("--per-modality", type=int, help="pilot targets per modality (default: the drafter's)")
    p.add_argument("--draw-seed", type=int, help="the pilot draw's numpy default_rng seed (default: the drafter's)")
    p = inner.add_parser("recommend-check", help="fix the recommendation rule on a main set, evaluate it on a "
                                                 "confirmation set (regret, against target-only)")
    p.set_defaults(func=cmd_recommend_check)
    p.add_argument("--main", required=True, metavar="CSV", help="the main plan's results.csv")
    p.add_argument("--confirm", required=True, metavar="CSV", help="the confirmation plan's results.csv")
