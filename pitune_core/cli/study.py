"""``pitune precompute``, ``pitune verify``, ``pitune report``: build, check and summarise a study."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pitune_core.cli.options import add_study, study_of
from pitune_core.paths import StudyPaths, plan_path
from pitune_core.study.plan import GROUNDTRUTH_PLAN, PROTOCOL_PLAN, STAGES, full_plan, quick_plan
from pitune_core.study.verify import verify_study
from pitune_core.study.manifest import register_files


def cmd_precompute(args) -> int:
    from pitune_core.study.pipeline import run_precompute  # lazy: loads numpy

    plan = quick_plan() if args.quick else full_plan()
    if args.tasks:
        from pitune_core.data.tasks import get_task  # lazy: loads numpy (keeps `pitune --help` fast)

        for t in args.tasks:
            get_task(t)
        plan.tasks = list(args.tasks)
        plan.extra_methods = {m: [t for t in ts if t in args.tasks] for m, ts in plan.extra_methods.items()}
        # the measurement plans name their own tasks: with a subset they are the user's to give
        plan.groundtruth_plan = plan.protocol_plan = None
    for field in ("groundtruth_plan", "protocol_plan"):
        given = getattr(args, field)
        if given is not None:
            setattr(plan, field, None if given.lower() == "none" else given)
        if getattr(plan, field):
            _check_plan_file(field, getattr(plan, field))
    command = "pitune " + " ".join(sys.argv[1:]) if sys.argv and "pitune" in sys.argv[0] else "pitune precompute"
    manifest = run_precompute(args.out, plan, projector=args.projector, command=command, only=args.stages)
    print(f"study written to {args.out} ({len(manifest['files'])} files)")
    return 0


def _check_plan_file(field: str, name: str) -> None:
    """Load a measurement plan before any stage runs, so a bad file fails in one line at once."""
    if field == "groundtruth_plan":
        from pitune_core.study.transfer import load_plan  # lazy: loads torch
    else:
        from pitune_core.study.protocol import load_plan  # lazy: the other branch's load_plan loads torch
    load_plan(plan_path(name))


def cmd_verify(args) -> int:
    args.study = study_of(args)
    problems = verify_study(args.study, load_experts=not args.no_load)
    if problems:
        print(f"{args.study}: {len(problems)} problem(s):")
        for p in problems:
            print(f"  - {p}")
        print(f"Rebuild with `pitune precompute --out {args.study}` (finished steps are kept).")
        return 1
    n = len(json.loads(StudyPaths(args.study).manifest.read_text())["files"])
    print(f"{args.study}: OK ({n} files verified against manifest.json" + ("" if args.no_load else ", experts load") + ")")
    return 0


def register(sub, add) -> None:
    sp = add("precompute", cmd_precompute, "run the whole study end to end (resumable)")
    sp.add_argument("--out", default="precomputed")
    sp.add_argument("--tasks", nargs="*", help="restrict the foundation (experts, embeddings, graphs) to these tasks; "
                    "the measurement stages then run only with a --groundtruth-plan / --protocol-plan given")
    sp.add_argument("--quick", action="store_true", help="a small, fast variant (CI / smoke test)")
    sp.add_argument("--projector", help="reuse this projector instead of aligning a new one")
    sp.add_argument("--stages", nargs="*", choices=STAGES, help="run only these stages")
    sp.add_argument("--groundtruth-plan", metavar="FILE", help="the transfer plan of the groundtruth stage "
                    f"(default: {GROUNDTRUTH_PLAN}; --quick: its own small plan; 'none' skips the stage)")
    sp.add_argument("--protocol-plan", metavar="FILE", help="the few-shot plan of the protocol stage "
                    f"(default: {PROTOCOL_PLAN or 'none yet on this task suite'}; --quick: its own small plan; "
                         f"'none' skips the stage)")
    sp = add("verify", cmd_verify, "check a study directory against its manifest; load every expert")
    add_study(sp, positional=True)
    sp.add_argument("--no-load", action="store_true", help="checksums only")


def cmd_report(args) -> int:
    from pitune_core.study.report import report  # lazy: loads numpy

    study = Path(study_of(args))
    text = report(study)
    if args.out:
        Path(args.out).write_text(text)

        # a report written into the study (its REPORT.md) is listed in its manifest, so it keeps verifying
        if register_files(study, [Path(args.out)]):
            print(f"report written to {args.out} (listed in {study}/manifest.json)", file=sys.stderr)
        else:
            print(f"report written to {args.out}", file=sys.stderr)
    else:
        print(text)
    return 0


def register_report(sub, add) -> None:
    sp = add("report", cmd_report, "the study's results as Markdown tables (computed from its files)")
    add_study(sp, positional=True)
    sp.add_argument("--out", help="write to this file instead of stdout")
