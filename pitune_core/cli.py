"""The ``pitune`` command line (also ``python -m pitune_core``).

Each sub-command is a thin shell over a library verb; errors the user can fix are printed as one
clear line (exit status 2), never as a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import __version__

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, RuntimeError)


def _backbone(args):
    from .backbone import UnifiedBackbone
    from .device import configure_threads, default_device

    configure_threads()
    return UnifiedBackbone.load(getattr(args, "projector", None), device=default_device(getattr(args, "device", None)))


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False, default=str))


# ----------------------------------------------------------------------------- foundation

def cmd_tasks(args) -> int:
    from .tasks import list_tasks

    rows = []
    specs = list_tasks(args.modality)
    for spec in specs:
        info = spec.info()
        if not args.no_load:
            data = spec.load()
            info.update(num_train=len(data.train), num_val=len(data.val), num_test=len(data.test))
        rows.append(info)
    if args.json:
        _print_json(rows)
        return 0
    print(f"{'task':24s} {'modality':16s} {'classes':>7s} {'train':>6s} {'test':>6s}  source")
    for r in rows:
        print(f"{r['name']:24s} {r['modality']:16s} {r['num_classes']:7d} {r.get('num_train', '-'):>6} "
              f"{r.get('num_test', '-'):>6}  {r['source']}")
    print(f"\n{len(rows)} tasks: " + ", ".join(
        f"{sum(r['modality'] == m for r in rows)} {m}" for m in ("language", "vision", "vision-language")))
    return 0


def cmd_fetch(args) -> int:
    from .backbone import VisionConfig, task_features
    from .tasks import get_task, list_tasks

    specs = [get_task(t) for t in args.tasks] if args.tasks else list_tasks()
    for spec in specs:
        data = spec.load()
        task_features(data, config=VisionConfig())
        print(f"{spec.name}: {len(data.train)}/{len(data.val)}/{len(data.test)} train/val/test ready", file=sys.stderr)
    return 0


def cmd_align(args) -> int:
    from .align import AlignConfig, train_projector
    from .device import configure_threads, default_device

    configure_threads()
    cfg = AlignConfig(epochs=args.epochs, pairs_per_task=args.pairs_per_task, seed=args.seed)
    meta = train_projector(args.tasks or None, out=args.out, cfg=cfg, device=default_device(args.device))
    print(f"projector saved to {args.out}", file=sys.stderr)
    _print_json(meta["metrics"])
    return 0


def cmd_train_expert(args) -> int:
    from .experts import TrainConfig, get_method, train_expert
    from .tasks import get_task

    spec = get_task(args.task)  # validate before loading anything heavy
    get_method(args.method)
    if args.shots is not None:
        spec.load().few_shot(args.shots, seed=args.seed)
    out = args.out or str(Path("experts") / args.method / spec.name)
    bb = _backbone(args)
    cfg = TrainConfig(epochs=args.epochs, seed=args.seed, batch_size=args.batch_size,
                      max_steps=args.max_steps or TrainConfig.max_steps, lr=args.lr)
    from tqdm.auto import tqdm

    bar = tqdm(desc=f"train {args.method} on {spec.name}", unit="step", disable=os.environ.get("PITUNE_QUIET") == "1")

    def on_step(p):
        if p.get("stage") == "train":
            bar.total = p["total"]
            bar.update(1)
            bar.set_postfix(loss=f"{p['loss']:.3f}")

    res = train_expert(spec, args.method, bb, shots=args.shots, seed=args.seed, out=out, train_config=cfg,
                       on_step=on_step)
    bar.close()
    m = res.meta["metrics"]
    print(f"expert saved to {out}", file=sys.stderr)
    _print_json({"task": spec.name, "method": args.method, "test": m["test"], "zero_shot_test": m.get("zero_shot_test"),
                 "majority_test": m["majority_test"], "train_time_s": res.meta["train_time_s"],
                 "peak_memory_mb": res.meta["peak_memory_mb"]})
    return 0


def cmd_evaluate(args) -> int:
    from .experts import evaluate_expert, read_expert_meta

    read_expert_meta(args.expert_dir)  # clear error before the backbone loads
    res = evaluate_expert(args.expert_dir, _backbone(args), split=args.split, blank_images=args.blank_images)
    _print_json(res)
    return 0


# ----------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pitune", description="π-Tuning: predict which experts transfer, "
                                "interpolate them, tune on the target.")
    p.add_argument("--version", action="version", version=f"pitune {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, fn, help_, backbone=False):
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(func=fn)
        if backbone:
            sp.add_argument("--projector", help="projector artifact directory (default: the shipped precomputed/backbone)")
            sp.add_argument("--device", help="cpu or cuda (default: cuda when available)")
        return sp

    sp = add("tasks", cmd_tasks, "list the task suite")
    sp.add_argument("--json", action="store_true", help="print a JSON list")
    sp.add_argument("--modality", choices=["language", "vision", "vision-language"])
    sp.add_argument("--no-load", action="store_true", help="do not download/build data (sizes unknown)")

    sp = add("fetch", cmd_fetch, "download and cache task data and image features")
    sp.add_argument("tasks", nargs="*", help="task names (default: all)")

    sp = add("align", cmd_align, "train the backbone's projector (alignment pre-training)", backbone=False)
    sp.add_argument("--out", default="precomputed/backbone")
    sp.add_argument("--tasks", nargs="*", help="image tasks whose training splits to align on (default: pitune_core.align.ALIGN_TASKS)")
    sp.add_argument("--epochs", type=int, default=6)
    sp.add_argument("--pairs-per-task", type=int, default=400)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--device")

    sp = add("train-expert", cmd_train_expert, "train one expert on a task", backbone=True)
    sp.add_argument("task")
    sp.add_argument("--method", default="lora", help="lora (default), prompt or ia3")
    sp.add_argument("--shots", type=int, help="examples per class (default: all training data)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--out", help="expert directory (default: experts/METHOD/TASK)")
    sp.add_argument("--epochs", type=float, default=3.0)
    sp.add_argument("--batch-size", type=int, default=16)
    sp.add_argument("--max-steps", type=int)
    sp.add_argument("--lr", type=float)

    sp = add("evaluate", cmd_evaluate, "evaluate a saved expert on its task", backbone=True)
    sp.add_argument("expert_dir")
    sp.add_argument("--split", default="test", choices=["train", "val", "test"])
    sp.add_argument("--blank-images", action="store_true", help="replace every image by a blank one (ablation)")

    for register in _extensions():
        register(sub, add)
    return p


def _extensions():
    """Sub-commands contributed by other modules (predict, interpolate, runs, precompute, dashboard)."""
    regs = []
    for mod, fn in (("pitune_core.predict_cli", "register"), ("pitune_core.transfer_cli", "register"),
                    ("pitune_core.precompute", "register"), ("pitune_core.report", "register"), ("pitune_core.runs.cli", "register"),
                    ("pitune_core.dashboard_cli", "register")):
        try:
            module = __import__(mod, fromlist=[fn])
        except ModuleNotFoundError as e:
            if e.name == mod:
                continue
            raise
        if hasattr(module, fn):
            regs.append(getattr(module, fn))
    return regs


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("pitune: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        if os.environ.get("PITUNE_DEBUG"):
            raise
        print(f"pitune: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
