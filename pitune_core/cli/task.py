"""``pitune task add|list|show|edit|remove|place``: bring your own target task.

A thin shell over :mod:`pitune_core.data.user_tasks` (the store) and :mod:`pitune_core.study.place`
(putting a task on a study's graph). Every input problem is one ``pitune: error:`` line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pitune_core.cli.options import action_adder, add_db, add_expert_type, add_study, db_of, study_of
from pitune_core.common import StageBars, printable
from pitune_core.spec.configs import PlaceConfig
from pitune_core.spec.parse import shots_arg
from pitune_core.runs import executor  # executor.ensure_scheduler is looked up when called (tests replace it)
from pitune_core.runs.registry import RunRegistry


def _read(path: str, limit: int) -> bytes:
    from pitune_core.data.user_tasks import read_file  # lazy: loads safetensors

    return read_file(path, limit)


def _counts_table(spec: dict) -> str:
    """The classes as a table; labels and verbalisations are printed without control characters (a
    store written by an older pitune, or by hand, may hold ESC sequences)."""
    counts = spec["counts"]
    width = max(8, *(len(printable(lab)) for lab in spec["labels"]))
    lines = [f"  {'class':{width}s} {'train':>6s} {'val':>5s} {'test':>5s}  verbalisation"]
    for lab, verbal in zip(spec["labels"], spec["verbalizers"]):
        lines.append(f"  {printable(lab):{width}s} {counts['train'].get(lab, 0):6d} {counts['val'].get(lab, 0):5d} "
                     f"{counts['test'].get(lab, 0):5d}  {printable(verbal)}")
    return "\n".join(lines)


def cmd_add(args) -> int:
    from pitune_core.data import user_tasks as U  # lazy: loads safetensors

    given = [x for x in (args.text, args.images, args.pairs) if x]
    if len(given) != 1:
        raise U.UserTaskError("give exactly one of --text FILE, --images DIR and --pairs FILE")
    U.check_name(args.name)
    if args.text:
        test = (_read(args.test, U.LIMITS.max_text_bytes), args.test) if args.test else None
        draft = U.draft_text_task(args.name, _read(args.text, U.LIMITS.max_text_bytes), args.text, test=test,
                                  text_column=args.text_column, label_column=args.label_column,
                                  verbalizers=args.verbalizer, seed=args.seed)
    elif args.images:
        draft = U.draft_image_task(args.name, Path(args.images), test=Path(args.test) if args.test else None,
                                   verbalizers=args.verbalizer, seed=args.seed)
    else:
        draft = U.draft_pairs_task(args.name, Path(args.pairs), test=Path(args.test) if args.test else None,
                                   image_column=args.image_column, text_column=args.text_column,
                                   label_column=args.label_column, verbalizers=args.verbalizer, seed=args.seed)
    path = U.save_task(draft)
    spec = U.read_spec(args.name)
    print(f"added {args.name}: {spec['modality']} task (inferred from --{'text' if args.text else 'images' if args.images else 'pairs'}), "
          f"{len(spec['labels'])} classes, {spec['num_examples']} examples"
          f"{'' if spec['test_given'] else ' (seeded split: ~20% test, ~10% validation per class)'}")
    print(_counts_table(spec))
    print(f"stored in {path}", file=sys.stderr)
    print(f"next: pitune task place {args.name} --shots N   (then: pitune transfer {args.name})", file=sys.stderr)
    return 0


def cmd_list(args) -> int:
    from pitune_core.data import user_tasks as U  # lazy: loads safetensors

    rows = []
    for name in U.user_task_names():
        try:
            spec = U.read_spec(name)
        except U.UserTaskError as e:
            rows.append({"name": name, "error": str(e)})
            continue
        rows.append({"name": name, "modality": spec["modality"], "classes": len(spec["labels"]),
                     "examples": spec.get("num_examples"), "placed": _placed(name)})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no user tasks in {U.task_store()} (add one with `pitune task add NAME --text FILE`)")
        return 0
    print(f"{'task':24s} {'modality':16s} {'classes':>7s} {'examples':>8s}  placed on")
    for r in rows:
        if "error" in r:
            print(f"{r['name']:24s} (unreadable: {printable(r['error'])})")
            continue
        print(f"{r['name']:24s} {r['modality']:16s} {r['classes']:7d} {r['examples']:8d}  "
              f"{', '.join(r['placed']) or '-'}")
    print(f"\nstore: {U.task_store()}", file=sys.stderr)
    return 0


def _placed(name: str) -> list[str]:
    from pitune_core.data.user_tasks import PLACED_DIR, task_dir  # lazy: loads safetensors
    from pitune_core.study.read.placed import PLACEMENT_FILE, read_placement  # lazy: loads safetensors

    out = []
    for f in sorted((task_dir(name) / PLACED_DIR).glob(f"*/*/{PLACEMENT_FILE}")):
        try:
            rec = read_placement(f)
            out.append(printable(f"{Path(rec['study']).name} ({rec['method']}/{rec['embedding']})"))
        except (OSError, ValueError, KeyError):
            continue
    return out


def cmd_show(args) -> int:
    from pitune_core.data import user_tasks as U  # lazy: loads safetensors
    from pitune_core.data.user_tasks import PLACED_DIR, task_dir  # lazy: loads safetensors
    from pitune_core.study.read.placed import PLACEMENT_FILE, read_placement  # lazy: loads safetensors

    spec = U.read_spec(args.name)
    placements = []
    for f in sorted((task_dir(args.name) / PLACED_DIR).glob(f"*/*/{PLACEMENT_FILE}")):
        try:
            placements.append(read_placement(f))
        except (OSError, ValueError):
            continue
    if args.json:
        print(json.dumps({**spec, "store": str(task_dir(args.name)),
                          "placements": [{k: p.get(k) for k in ("study", "method", "embedding", "top_k",
                                                                 "position", "layout", "config", "created")}
                                         for p in placements]}, indent=2))
        return 0
    print(f"{args.name}: {spec['modality']} user task, {len(spec['labels'])} classes, {spec['num_examples']} examples "
          f"from {printable(', '.join(map(str, spec.get('sources', []))))}")
    print(_counts_table(spec))
    print(f"store: {task_dir(args.name)}")
    for p in placements:
        top = ", ".join(f"{n} ({s:.3f})" for n, s in p.get("top_k", []))
        print(printable(f"placed on {p.get('study')} [{p.get('method')}/{p.get('embedding')}, shots "
                        f"{(p.get('config') or {}).get('shots') or 'all'}]: top-k {top}"))
    return 0


def cmd_edit(args) -> int:
    from pitune_core.data import user_tasks as U  # lazy: loads safetensors

    if not args.verbalizer:
        raise U.UserTaskError("nothing to change: give --verbalizer LABEL=TEXT (repeatable)")
    spec = U.set_verbalizers(args.name, args.verbalizer)
    print(_counts_table(spec))
    print("verbalisations saved; earlier placements were dropped (place the task again)", file=sys.stderr)
    return 0


def cmd_remove(args) -> int:
    from pitune_core.data import user_tasks as U  # lazy: loads safetensors

    path = U.remove_task(args.name)
    print(f"removed {args.name} ({path})")
    return 0


def cmd_place(args) -> int:
    from pitune_core.study.place import check_place, place_task  # lazy: loads safetensors

    study = Path(study_of(args)).resolve()
    cfg = PlaceConfig(shots=args.shots, seed=args.seed, k=args.k, method=args.expert_type,
                      max_steps=args.max_steps)
    check_place(args.name, study, cfg)  # every input error before anything loads or trains
    if args.submit:
        import pitune_core.jobs  # noqa: F401  # lazy: loads numpy; importing it registers the job kinds
        from pitune_core.data.user_tasks import task_store  # lazy: loads numpy (keeps `pitune --help` fast)

        db = db_of(args)
        run_id = RunRegistry(db).submit("place-task", {"task": args.name, "study": str(study), "method": cfg.method,
                                                        "embedding": cfg.embedding, "shots": cfg.shots,
                                                        "seed": cfg.seed, "k": cfg.k, "max_steps": cfg.max_steps,
                                                        "store": str(task_store())},
                                        name=f"place {args.name}")
        executor.ensure_scheduler(db)
        print(run_id)
        return 0
    from pitune_core.model.device import configure_threads  # lazy: loads torch

    configure_threads()
    bar = StageBars(f"placing {args.name}")
    try:
        rec = place_task(args.name, study, cfg, on_progress=bar)
    finally:
        bar.close()
    print(f"{args.name} placed on {study} ({cfg.method} experts, {cfg.embedding}; own expert trained on "
          f"{rec['examples_used']} examples, test accuracy {rec['expert']['test']['accuracy']:.3f}; "
          f"{rec['timings_s']['total']:.0f} s)")
    print(f"top-{len(rec['top_k'])} sources by {rec['embedding']} (cosine similarity): "
          + ", ".join(f"{n} ({s:.3f})" for n, s in rec["top_k"]))
    if rec["position"]:
        print(f"map position ({rec['position'][0]:.2f}, {rec['position'][1]:.2f}): {rec['layout']}")
    for graph, top in (rec.get("also_placed_on") or {}).items():
        print(f"also placed on {graph} (the study's default ranking): top-{len(top)} "
              + ", ".join(f"{n} ({x:.2f})" for n, x in top)
              + (" (percentiles of that predictor's scores: the dashboard's default graph shows this list; "
                 f"`pitune transfer --embedding {rec['embedding']}` ranks by the first)"
                 if [n for n, _ in top] != [n for n, _ in rec["top_k"]][:len(top)] else ""))
    for graph, why in (rec.get("not_placed_on") or {}).items():
        print(f"not placed on {graph}: {why}", file=sys.stderr)
    print(f"next: pitune transfer {args.name} --study {study} --shots {args.shots or 'full'}", file=sys.stderr)
    return 0


def cmd_task(args) -> int:
    return args.task_func(args)


def register(sub, add) -> None:
    sp = add("task", cmd_task, "bring your own target task: add, list, show, edit, remove, place on the graph")
    action = action_adder(sp, "task_command", "task_func")

    p = action("add", cmd_add, "add a task from a CSV/JSONL of texts, a folder (or zip) of class folders of "
                               "images, or JSONL image-text pairs")
    p.add_argument("name", help="a new name: lower-case letters, digits, underscores (not a built-in task)")
    p.add_argument("--text", metavar="FILE", help="CSV/TSV/JSONL with a text and a label column (language)")
    p.add_argument("--images", metavar="DIR", help="one sub-folder per class (or a .zip of them) (vision)")
    p.add_argument("--pairs", metavar="FILE", help="JSONL rows {image, text, label}, image paths relative to "
                                                  "the file (or a .zip holding both) (vision-language)")
    p.add_argument("--test", metavar="FILE|DIR", help="a separate test set of the same form (default: seeded split)")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    p.add_argument("--image-column", default="image")
    p.add_argument("--verbalizer", action="append", metavar="LABEL=TEXT",
                   help="how a class is said in words (default: its label); repeatable")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/val/test split")

    p = action("list", cmd_list, "list the user tasks")
    p.add_argument("--json", action="store_true")

    p = action("show", cmd_show, "a user task's classes, counts, verbalisations and placements")
    p.add_argument("name")
    p.add_argument("--json", action="store_true")

    p = action("edit", cmd_edit, "change a user task's verbalisations")
    p.add_argument("name")
    p.add_argument("--verbalizer", action="append", metavar="LABEL=TEXT")

    p = action("remove", cmd_remove, "delete a user task (and its placements) from the store")
    p.add_argument("name")

    p = action("place", cmd_place, "put a user task on a study's graph: its own expert, Fisher embedding, "
                                   "similarities to every expert, top-k sources, map position")
    p.add_argument("name")
    p.add_argument("--shots", type=shots_arg, **PlaceConfig.arg("shots"))
    p.add_argument("--k", type=int, **PlaceConfig.arg("k"))
    p.add_argument("--seed", type=int, **PlaceConfig.arg("seed"))
    p.add_argument("--max-steps", type=int, help="training steps of the task's own expert "
                                                 "(default: the few-shot budget, 30-100)")
    add_expert_type(p)
    add_study(p)
    p.add_argument("--submit", action="store_true", help="run it in the background (run registry) and return")
    add_db(p, "run registry (with --submit)")
