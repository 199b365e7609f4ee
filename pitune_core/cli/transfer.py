"""CLI: ``pitune transfer`` (one π-Tuning run) and ``pitune compare`` (π-Tuning vs baselines)."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path

from pitune_core.cli.options import add_db, add_embedding, add_expert_type, add_study, db_of, study_of
from pitune_core.common import (StageBars, check_task_name, parse_int_list, parse_shots, parse_shots_list, parse_sources,
                                progress)
from pitune_core.study.verify import require_verified
from pitune_core.paths import RESULTS_FILE, StudyPaths, runs_root
from pitune_core.spec.configs import TransferConfig
from pitune_core.spec.parse import shots_arg
from pitune_core.spec.vocab import ACTIVE_STATUSES, APPROACHES, DEFAULT_K, INTERRUPTED
from pitune_core.runs.registry import RunRegistry, set_aside, SUCCEEDED
from pitune_core.runs import executor  # executor.ensure_scheduler is looked up when called (tests replace it)


def cmd_transfer(args) -> int:
    if getattr(args, "library", None):  # π-Tuning over an imported library (`pitune library import`)
        return library_transfer(args)
    from pitune_core.study.sources import load_sources  # lazy: loads torch
    from pitune_core.tune.run import prepare_transfer, run_transfer  # lazy: loads torch

    study = study_of(args)
    # the spec's settings: target, k, sources (no duplicates, k matches), weights, shots; readable errors
    # before the study is even opened
    tc = TransferConfig(target=args.target, k=args.k, method=args.expert_type, shots=args.shots,
                        weights=args.weights, sources=args.sources, seed=args.seed, study=str(study),
                        weights_only=args.weights_only, embedding=args.embedding, own_expert=not args.no_own_expert)
    named = list(tc.sources) if tc.sources else None
    require_verified(study, "transfer")  # a study that fails its manifest check is refused
    config = {**tc.to_dict(), "k": tc.resolved_k}  # --sources a,b means k=2
    sources = load_sources(study, args.expert_type, args.embedding)
    _check_listed(named, sources, args.expert_type, args.embedding)
    cfg = prepare_transfer(config, sources)  # every error surfaces here, before training or any directory
    if args.submit:
        db = db_of(args)
        reg = RunRegistry(db)
        run_id = reg.submit("transfer", {**config, "study": str(Path(study).resolve())},
                            name=f"transfer {args.target} k={cfg['k']}")
        executor.ensure_scheduler(db)
        print(run_id)
        return 0
    out = None if args.out is None and not args.no_record else _fresh_run_dir(args.out, args.target)  # refused first
    if named or cfg["shots"] is None:
        print(f"sources: {', '.join(f'{n} ({s:.3f})' for n, s in zip(cfg['sources'], cfg['similarities']))}",
              file=sys.stderr)
    else:
        print(f"sources: the top {cfg['k']} of the study's experts, ranked by {args.embedding} on the run's own "
              f"{cfg['shots']}-shot examples (in the result below)", file=sys.stderr)
    if out is None:
        return _run_recorded(args, config, study)
    return _in_foreground(f"π-tuning {args.target}", lambda bar: run_transfer(config, sources, out, on_step=bar),
                          f"run written to {out} (not recorded in the run registry: "
                          f"{'--out' if args.out else '--no-record'} was given)")


def _in_foreground(what: str, run, note: str) -> int:
    """Run ``run(bar)`` with a progress bar named ``what``, then say ``note`` and print its result."""
    bar = StageBars(what)
    try:
        res = run(bar)
    finally:
        bar.close()
    print(note, file=sys.stderr)
    print(json.dumps(res, indent=2))
    return 0


def _run_recorded(args, config: dict, study, kind: str = "transfer", what: str = "") -> int:
    """Run in the foreground as a run of the registry (``--db``): it is listed by ``pitune runs``
    and on the dashboard's Runs & compare tab like a run launched there, its files in the
    registry's run folder. A scheduler that claims it first runs it instead (then followed here)."""
    from pitune_core.model.device import configure_threads  # lazy: loads torch
    from pitune_core.runs.worker import execute_run  # lazy: `pitune --help` does not load it

    db = db_of(args)
    reg = RunRegistry(db)
    run_id = reg.submit(kind, {**config, "study": str(Path(study).resolve())},
                        name=f"transfer {args.target}{what} k={config['k']} (command line)")
    print(f"run {run_id} recorded in {db} (the dashboard shows it; --no-record runs without the registry)",
          file=sys.stderr)
    bar = StageBars(f"π-tuning {args.target}")
    try:
        status = execute_run(db, run_id, claim=True, num_threads=configure_threads(), on_progress=bar)
    finally:
        bar.close()
    rec = reg.get(run_id)
    if status in ACTIVE_STATUSES:  # a scheduler claimed it between submit and claim
        print(f"run {run_id} is being run by the registry's scheduler; follow it with `pitune runs logs {run_id} "
              f"--db {db}`", file=sys.stderr)
        return 0
    print(f"run written to {rec.run_dir}", file=sys.stderr)
    if status != SUCCEEDED:
        print(f"error: run {run_id} {status}: {rec.error or ''}".rstrip(), file=sys.stderr)
        return 130 if status == INTERRUPTED else 1
    print(json.dumps(rec.metrics, indent=2))
    return 0


def _fresh_run_dir(out: str | None, target: str) -> Path:
    """The directory this run writes, holding no earlier attempt: a default one is new (a suffix if the
    second is taken); an earlier run's files in ``--out`` are first moved into ``attempt-<n>/`` (said
    on stderr), so a new config.json or FAILED never sits beside an old metrics.json or expert/. Only
    files pitune wrote are moved: a directory without a run's marker (``tune.run.RUN_MARKER``), or
    holding anything a run does not write, is refused with one line and left as it is."""
    import re

    if out is None:
        base = runs_root() / "transfer" / f"{target}-{datetime.now():%Y%m%d-%H%M%S}"
        path, n = base, 1
        while path.exists():
            n += 1
            path = base.with_name(f"{base.name}-{n}")
        return path
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {path} is a file; give a directory")
    if path.is_dir():
        from pitune_core.tune.run import RUN_FILES, RUN_MARKER  # lazy: loads torch

        taken = [int(m.group(1)) for p in path.iterdir() if (m := re.fullmatch(r"attempt-([0-9]+)", p.name))]
        present = sorted(p.name for p in path.iterdir() if not re.fullmatch(r"attempt-[0-9]+(\.[0-9]+)?", p.name))
        ours = (path / RUN_MARKER).is_file() and not (path / RUN_MARKER).is_symlink()
        foreign = [n for n in present if not ours or n not in RUN_FILES]
        if foreign:  # only what pitune wrote (its marker says so) is ever moved
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise ValueError(f"--out {path} holds files pitune did not write ({shown}); give a new or empty "
                             f"directory (only an earlier pitune run there is moved aside, into attempt-N/)")
        try:
            moved = set_aside(path, f"attempt-{max(taken, default=0) + 1}")
        except OSError as e:
            raise ValueError(f"--out {path} holds an earlier run that cannot be moved aside ({e.strerror}); "
                             f"give another --out") from None
        if moved is not None:
            print(f"{path} held an earlier run: moved its files to {moved}", file=sys.stderr)
    return path


def _check_listed(named, sources, expert_type: str, embedding: str) -> None:
    """Named sources must have an expert AND a predicted similarity (readable, not ``list.index``)."""
    for n in named or []:
        if n not in sources.expert_dirs:
            raise ValueError(f"no {expert_type} expert for source {n!r} in this study; available: "
                             f"{', '.join(sorted(sources.expert_dirs))}")
        if n not in sources.names:
            raise ValueError(f"source {n!r} has an expert but no {embedding} similarity in this study "
                             f"(it is not listed in similarity.csv); rebuild the predictions with "
                             f"`pitune precompute` or choose another source")


def cmd_compare(args) -> int:
    if getattr(args, "library", None):  # an imported library's adapters as the sources
        return library_compare(args)
    from pitune_core.model.backbone import UnifiedBackbone  # lazy: loads torch
    from pitune_core.study.sources import load_sources  # lazy: loads torch
    from pitune_core.tune.baselines import BASELINES  # lazy: loads torch

    approaches = args.approaches or list(BASELINES)
    unknown = [a for a in approaches if a not in BASELINES]
    if unknown:
        raise ValueError(f"unknown approach(es) {', '.join(unknown)}; choose from {', '.join(BASELINES)}")
    shots = parse_shots_list(args.shots)
    seeds = parse_int_list(args.seeds, "seeds")
    check_task_name(args.target, "target")
    study = study_of(args)
    require_verified(study, "compare")  # a study that fails its manifest check is refused
    sources = load_sources(study, args.expert_type)
    sources.top_k(args.target, args.k)  # validates target and k before anything runs
    bb = UnifiedBackbone.load(StudyPaths(study).backbone)
    return run_compare(args, sources, bb, approaches, shots, seeds)


def run_compare(args, sources, bb, approaches: list[str], shots: list, seeds: list[int]) -> int:
    """Every approach x shots x seed on ``sources`` (a study's, or an imported library's), into
    ``--out``/results.csv (rewritten after each run)."""
    from pitune_core.study.read.results import result_row, write_results  # lazy: `pitune --help` does not load it
    from pitune_core.tune.baselines import run_method  # lazy: loads torch

    out = Path(args.out or runs_root() / "compare" / args.target)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    jobs = [(a, s, seed) for seed in seeds for s in shots for a in approaches]
    for a, s, seed in progress(jobs, desc=f"compare on {args.target}"):
        r = run_method(a, args.target, sources, bb, args.expert_type, k=args.k, shots=s, seed=seed)
        rows.append(result_row(r))
        write_results(out / RESULTS_FILE, rows)  # rewritten after each run: never lost
    print(f"results written to {out / 'results.csv'}", file=sys.stderr)
    for r in rows:
        print(f"{r['approach']:24s} shots={r['shots']!s:5s} seed={r['seed']} accuracy={r['accuracy']:.4f}")
    return 0


# ----------------------------------------------------------------------------- transfer / compare --library

def library_transfer(args) -> int:
    """``pitune transfer --library LIB``: π-Tuning over an imported library's adapters."""
    from pitune_core.model.library import open_library  # lazy: `pitune --help` does not load it
    from pitune_core.tune.library import prepare_library_transfer, resolve_embedding, run_library_transfer  # lazy: loads numpy

    check_task_name(args.target, "target")
    if args.submit:
        raise ValueError("--submit is not available with --library yet: run it in the foreground")
    named = parse_sources(args.sources, args.k)
    emb = resolve_embedding(open_library(args.library), getattr(args, "embedding", None))
    config = {"target": args.target, "k": args.k if args.k is not None else (len(named) if named else DEFAULT_K),
              "shots": parse_shots(args.shots), "weights": args.weights, "sources": named, "seed": args.seed,
              "weights_only": args.weights_only, "own_expert": not args.no_own_expert}
    prepare_library_transfer(config, args.library, emb)  # every error surfaces here, before any directory
    if args.out is None and not args.no_record:  # recorded in the run registry, as a study's run is
        return _run_recorded(args, {**config, "library": args.library, "embedding": emb}, open_library(args.library).root,
                             kind="library-transfer", what=f" on library {args.library}")
    out = _fresh_run_dir(args.out, args.target)
    return _in_foreground(f"π-tuning {args.target} on library {args.library}",
                          lambda bar: run_library_transfer(config, args.library, out, emb, on_step=bar),
                          f"run written to {out}; its expert/ is a peft adapter of the library's base "
                          f"(PeftModel.from_pretrained(AutoModel.from_pretrained(BASE), '{out / 'expert'}'))")


#: the approaches ``compare --library`` runs by default: π-Tuning and every baseline that takes a library
LIBRARY_APPROACHES = ("pi-tuning", "best-single", "target-only", "peft-linear", "peft-ties", "peft-dare", "lorahub",
                      "arrow")


def library_compare(args) -> int:
    """``pitune compare --library LIB``: the approaches that take a library, over its adapters."""
    from pitune_core.model.library import open_library, using_base  # lazy: `pitune --help` does not load it
    from pitune_core.tune.library import library_backbone, library_sources, resolve_embedding  # lazy: loads numpy

    approaches = args.approaches or list(LIBRARY_APPROACHES)
    unknown = [a for a in approaches if a not in APPROACHES]
    if unknown:
        raise ValueError(f"unknown approach(es) {', '.join(unknown)}; choose from {', '.join(APPROACHES)}")
    if args.expert_type != "lora":
        raise ValueError("a library holds LoRA adapters: --expert-type lora")
    shots, seeds = parse_shots_list(args.shots), parse_int_list(args.seeds, "seeds")
    check_task_name(args.target, "target")
    lib = open_library(args.library)
    if not 1 <= args.k <= len([a for a in lib.adapters if a != args.target]):
        raise ValueError(f"k={args.k} is out of range: library {lib.name} has {len(lib.adapters)} adapters")
    with using_base(lib.base):
        sources = library_sources(lib, args.target, resolve_embedding(lib, None))
        return run_compare(args, sources, library_backbone(lib), approaches, shots, seeds)


def register(sub, add) -> None:
    sp = add("transfer", cmd_transfer, "π-Tuning: interpolate the top-k experts and tune on a target")
    sp.add_argument("target")
    sp.add_argument("--k", type=int, **TransferConfig.arg("k"))
    add_expert_type(sp)
    sp.add_argument("--shots", type=shots_arg, **TransferConfig.arg("shots"))
    sp.add_argument("--weights", **TransferConfig.arg("weights"))
    sp.add_argument("--sources", **TransferConfig.arg("sources"))
    sp.add_argument("--seed", type=int, **TransferConfig.arg("seed"))
    add_study(sp)
    add_embedding(sp, "the task embedding that ranks the sources")
    sp.add_argument("--weights-only", action="store_true", help=TransferConfig.help_of("weights_only"))
    sp.add_argument("--no-own-expert", action="store_true",
                    help="leave the target's own expert (trained on the run's data, the paper's recipe) out of the "
                         "interpolation; fixed --weights w1,w2,... leave it out too")
    sp.add_argument("--out", help="run directory of your choice; such a run is not recorded in the run registry "
                                  "(default: recorded there, its files in the registry's run folder)")
    sp.add_argument("--library", metavar="LIB", help="interpolate an imported library's adapters "
                                                     "(`pitune library import`) instead of the study's")
    sp.add_argument("--submit", action="store_true", help="queue in the run registry and return at once")
    sp.add_argument("--no-record", action="store_true",
                    help="run without the run registry (into runs/transfer/TARGET-TIME; the dashboard does not "
                         "list it)")
    add_db(sp, "run registry: a run is recorded there unless --out or --no-record is given")

    sp = add("compare", cmd_compare, "run π-Tuning and the baselines on a target; write results.csv")
    sp.add_argument("target")
    sp.add_argument("--k", type=int, default=DEFAULT_K, help=f"sources per approach (default: {DEFAULT_K})")
    add_expert_type(sp)
    sp.add_argument("--shots", default="4,16", help="comma-separated shots per class ('full' for all data)")
    sp.add_argument("--seeds", default="0,1")
    sp.add_argument("--approaches", nargs="*", help="subset of the approaches (default: all)")
    add_study(sp)
    sp.add_argument("--out", help="output directory (default: runs/compare/TARGET)")
    sp.add_argument("--library", metavar="LIB", help="an imported library's adapters as the sources "
                                                     "(`pitune library import`); approaches: any of pitune's")
