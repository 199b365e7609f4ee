"""``pitune tasks``, ``fetch``, ``align``, ``train-expert``, ``evaluate``: the task suite, the backbone
and single experts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pitune_core.cli.options import add_expert_type
from pitune_core.common import StageBars, shots_arg
from pitune_core.spec.vocab import MODALITIES


def _backbone(args):
    from pitune_core.model.backbone import UnifiedBackbone  # lazy: loads torch
    from pitune_core.model.device import configure_threads, default_device  # lazy: loads torch

    configure_threads()
    return UnifiedBackbone.load(getattr(args, "projector", None), device=default_device(getattr(args, "device", None)))


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False, default=str))


def cmd_tasks(args) -> int:
    from pitune_core.data.dedup import in_suite, removed_by_kind, removed_counts  # lazy: loads safetensors
    from pitune_core.data.tasks import FAMILIES, list_tasks  # lazy: loads safetensors

    rows = []
    specs = list_tasks(args.modality, include_user=True)  # user tasks last; their source says "user task"
    for spec in specs:
        info = spec.info()
        removed = removed_counts(spec.name) if in_suite(spec) else None
        if removed is not None:
            info["duplicates_removed"] = removed["val"] + removed["test"]
            info["duplicates_removed_by"] = removed_by_kind(spec.name)
        if not args.no_load:
            data = spec.load()
            info.update(num_train=len(data.train), num_val=len(data.val), num_test=len(data.test))
        rows.append(info)
    if args.json:
        _print_json(rows)
        return 0
    print(f"{'task':24s} {'family':10s} {'modality':16s} {'classes':>7s} {'train':>6s} {'test':>6s} "
          f"{'dups':>5s} {'(img)':>5s}  source")
    for r in rows:
        by = r.get("duplicates_removed_by") or {}
        img = by.get("image", 0) + by.get("near_image", 0) if by else "-"
        print(f"{r['name']:24s} {r['family']:10s} {r['modality']:16s} {r['num_classes']:7d} {r.get('num_train', '-'):>6} "
              f"{r.get('num_test', '-'):>6} {r.get('duplicates_removed', '-'):>5} {img:>5}  {r['source']}")
    print("\ndups: val+test examples removed because another task's training split holds them; (img): of "
          "those, by their image alone (same or near-duplicate picture) (pitune_core/data/dedup.py)")
    print(f"\n{len(rows)} tasks: " + ", ".join(
        f"{sum(r['modality'] == m for r in rows)} {m}" for m in MODALITIES))
    families = {f: sorted({r["modality"] for r in rows if r["family"] == f}) for f in FAMILIES}
    print(f"{len(FAMILIES)} families: " + "; ".join(
        f"{f} ({sum(r['family'] == f for r in rows)} tasks: {', '.join(m)})" for f, m in families.items()))
    return 0


def cmd_fetch(args) -> int:
    from pitune_core.model.backbone import VisionConfig, task_features  # lazy: loads torch
    from pitune_core.data.tasks import get_task, list_tasks  # lazy: loads safetensors

    specs = [get_task(t) for t in args.tasks] if args.tasks else list_tasks()
    for spec in specs:
        data = spec.load()
        task_features(data, config=VisionConfig())
        print(f"{spec.name}: {len(data.train)}/{len(data.val)}/{len(data.test)} train/val/test ready", file=sys.stderr)
    return 0


def cmd_align(args) -> int:
    from pitune_core.model.align import AlignConfig, train_projector  # lazy: loads torch
    from pitune_core.model.device import configure_threads, default_device  # lazy: loads torch

    configure_threads()
    cfg = AlignConfig(epochs=args.epochs, pairs_per_task=args.pairs_per_task, seed=args.seed, captions=args.captions)
    meta = train_projector(args.tasks or None, out=args.out, cfg=cfg, device=default_device(args.device))
    print(f"projector saved to {args.out}", file=sys.stderr)
    _print_json(meta["metrics"])
    return 0


def cmd_train_expert(args) -> int:
    from pitune_core.model.experts import TrainConfig, get_method, train_expert  # lazy: loads torch
    from pitune_core.data.tasks import get_task  # lazy: loads safetensors

    spec = get_task(args.task)  # validate before loading anything heavy
    get_method(args.expert_type)
    if args.shots is not None:
        spec.load().few_shot(args.shots, seed=args.seed)
    out = args.out or str(Path("experts") / args.expert_type / spec.name)
    bb = _backbone(args)
    cfg = TrainConfig(epochs=args.epochs or TrainConfig.epochs, seed=args.seed, batch_size=args.batch_size,
                      max_steps=args.max_steps or TrainConfig.max_steps, lr=args.lr)

    bar = StageBars(f"{args.expert_type} expert of {spec.name}", train_label="train")
    res = train_expert(spec, args.expert_type, bb, shots=args.shots, seed=args.seed, out=out, train_config=cfg,
                       on_step=bar)
    bar.close()
    m = res.meta["metrics"]
    print(f"expert saved to {out}", file=sys.stderr)
    _print_json({"task": spec.name, "expert_type": args.expert_type, "test": m["test"], "zero_shot_test": m.get("zero_shot_test"),
                 "majority_test": m["majority_test"], "train_time_s": res.meta["train_time_s"],
                 "peak_memory_mb": res.meta["peak_memory_mb"]})
    return 0


def cmd_evaluate(args) -> int:
    from pitune_core.model.experts import evaluate_expert, read_expert_meta  # lazy: loads torch

    read_expert_meta(args.expert_dir)  # clear error before the backbone loads
    res = evaluate_expert(args.expert_dir, _backbone(args), split=args.split, blank_images=args.blank_images)
    _print_json(res)
    return 0


def register(sub, add) -> None:
    sp = add("tasks", cmd_tasks, "list the task suite")
    sp.add_argument("--json", action="store_true", help="print a JSON list")
    sp.add_argument("--modality", choices=list(MODALITIES))
    sp.add_argument("--no-load", action="store_true", help="do not download/build data (sizes unknown)")

    sp = add("fetch", cmd_fetch, "download and cache task data and image features")
    sp.add_argument("tasks", nargs="*", help="task names (default: all)")

    sp = add("align", cmd_align, "train the backbone's projector (alignment pre-training)", backbone=False)
    sp.add_argument("--out", required=True, help="folder for projector.safetensors + projector.json (a study's "
                    "backbone/ folder; never the shipped precomputed/backbone by accident, so no default)")
    sp.add_argument("--tasks", nargs="*", help="align on these image tasks' training splits instead of the default clip-art corpus "
                    "(openclipart-png, disjoint from every task); those tasks are then no zero-shot targets")
    sp.add_argument("--captions", choices=["subcategory", "category"], default="subcategory",
                    help="clip-art captions from the sub-directory (41 phrases, default) or the category (14)")
    sp.add_argument("--epochs", type=int, default=6)
    sp.add_argument("--pairs-per-task", type=int, default=400)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--device")

    sp = add("train-expert", cmd_train_expert, "train one expert on a task", backbone=True)
    sp.add_argument("task")
    add_expert_type(sp)
    sp.add_argument("--shots", type=shots_arg, help="examples per class (default: all training data)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--out", help="expert directory (default: experts/METHOD/TASK)")
    sp.add_argument("--epochs", type=float, help="passes over the training data (default: the expert budget's, "
                                                   "TrainConfig.epochs; steps clamped to --max-steps)")
    sp.add_argument("--batch-size", type=int, default=16)
    sp.add_argument("--max-steps", type=int)
    sp.add_argument("--lr", type=float)

    sp = add("evaluate", cmd_evaluate, "evaluate a saved expert on its task", backbone=True)
    sp.add_argument("expert_dir")
    sp.add_argument("--split", default="test", choices=["train", "val", "test"])
    sp.add_argument("--blank-images", action="store_true", help="replace every image by a blank one (ablation)")
