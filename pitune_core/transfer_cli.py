"""CLI: ``pitune transfer`` (one π-Tuning run) and ``pitune compare`` (π-Tuning vs baselines)."""

from __future__ import annotations

import csv
import json
import sys
from datetime import datetime
from pathlib import Path

from tqdm.auto import tqdm


def _shots(v: str) -> int | None:
    return None if v in ("full", "all", "none") else int(v)


def cmd_transfer(args) -> int:
    from .transfer_run import prepare_transfer, run_transfer

    config = {"target": args.target, "k": args.k, "method": args.method, "shots": _shots(args.shots),
              "weights": args.weights, "sources": args.sources, "seed": args.seed, "study": args.study,
              "weights_only": args.weights_only, "embedding": args.embedding}
    cfg = prepare_transfer(config)  # every error surfaces here, before training or any directory
    if args.submit:
        from .runs.executor import ensure_scheduler
        from .runs.registry import RunRegistry

        reg = RunRegistry(args.db)
        run_id = reg.submit("transfer", {**config, "study": str(Path(args.study).resolve())},
                            name=f"transfer {args.target} k={cfg['k']}")
        ensure_scheduler(args.db)
        print(run_id)
        return 0
    out = Path(args.out or Path("runs") / "transfer" / f"{args.target}-{datetime.now():%Y%m%d-%H%M%S}")
    print(f"sources: {', '.join(f'{n} ({s:.3f})' for n, s in zip(cfg['sources'], cfg['similarities']))}", file=sys.stderr)
    bar = tqdm(desc=f"π-tuning {args.target}", unit="step")

    def on_step(p):
        if p.get("stage") == "train":
            bar.total = p["total"]
            bar.update(1)
            bar.set_postfix(loss=f"{p['loss']:.3f}")

    res = run_transfer(config, out, on_step=on_step)
    bar.close()
    print(f"run written to {out}", file=sys.stderr)
    print(json.dumps(res, indent=2))
    return 0


def cmd_compare(args) -> int:
    from .backbone import UnifiedBackbone
    from .pituning import BASELINES, run_method
    from .transfer_run import load_sources

    approaches = args.approaches or list(BASELINES)
    unknown = [a for a in approaches if a not in BASELINES]
    if unknown:
        raise ValueError(f"unknown approach(es) {', '.join(unknown)}; choose from {', '.join(BASELINES)}")
    shots = [_shots(s) for s in args.shots.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    sources = load_sources(args.study, args.method)
    sources.top_k(args.target, args.k)  # validates target and k before anything runs
    bb = UnifiedBackbone.load(Path(args.study) / "backbone")
    out = Path(args.out or Path("runs") / "compare" / args.target)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    jobs = [(a, s, seed) for seed in seeds for s in shots for a in approaches]
    for a, s, seed in tqdm(jobs, desc=f"compare on {args.target}"):
        r = run_method(a, args.target, sources, bb, args.method, k=args.k, shots=s, seed=seed)
        rows.append({"target": args.target, "method": a, "shots": "full" if s is None else s, "seed": seed,
                     "accuracy": round(r["accuracy"], 4), "score": round(r["score"], 4), "metric": r["metric"],
                     "sources": "|".join(r.get("sources", []))})
        with open(out / "results.csv", "w", newline="") as f:  # rewritten after each run: never lost
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    print(f"results written to {out / 'results.csv'}", file=sys.stderr)
    for r in rows:
        print(f"{r['method']:24s} shots={r['shots']!s:5s} seed={r['seed']} accuracy={r['accuracy']:.4f}")
    return 0


def register(sub, add) -> None:
    sp = add("transfer", cmd_transfer, "π-Tuning: interpolate the top-k experts and tune on a target")
    sp.add_argument("target")
    sp.add_argument("--k", type=int, default=3)
    sp.add_argument("--method", default="lora", help="expert type: lora, prompt or ia3")
    sp.add_argument("--shots", default="16", help="examples per class, or 'full'")
    sp.add_argument("--weights", default="uniform", help="uniform, auto (from similarities) or w1,w2,... (fixed)")
    sp.add_argument("--sources", help="comma-separated source tasks (default: top-k predicted)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--study", default="precomputed", help="study directory with experts and similarities")
    sp.add_argument("--embedding", default="fisher", choices=["fisher", "weights", "data"])
    sp.add_argument("--weights-only", action="store_true", help="freeze the experts, tune only the weights")
    sp.add_argument("--out", help="run directory (default: runs/transfer/TARGET-TIME)")
    sp.add_argument("--submit", action="store_true", help="queue in the run registry and return at once")
    sp.add_argument("--db", default="runs/registry.sqlite", help="run registry (with --submit)")

    sp = add("compare", cmd_compare, "run π-Tuning and the baselines on a target; write results.csv")
    sp.add_argument("target")
    sp.add_argument("--k", type=int, default=3)
    sp.add_argument("--method", default="lora")
    sp.add_argument("--shots", default="4,16", help="comma-separated shots per class ('full' for all data)")
    sp.add_argument("--seeds", default="0,1")
    sp.add_argument("--approaches", nargs="*", help="subset of the approaches (default: all)")
    sp.add_argument("--study", default="precomputed")
    sp.add_argument("--out", help="output directory (default: runs/compare/TARGET)")
