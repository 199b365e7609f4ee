"""Benchmark: one comparison cell's selecting approaches with and without the shared target side.

Run as ``python bench/bench_side_cache.py [--target T] [--shots N] [--seed S] [--approaches A,B,...]``
(default: sklearn_digits, 4 shots, seed 0, the core approaches that select sources: pi-tuning, best-single,
peft-linear) on the shipped ``precomputed/`` study. Each approach of the cell runs twice in this one
process, side by side: without a cache (every run trains its own expert, takes its Fisher and ranks the
sources: what ``pitune study run`` did before ``pitune_core/tune/side_cache.py``), then with a fresh cache
(the first run builds the side, the others reuse it). Printed: CPU seconds per run (this process, all its
threads) and the cell's total both ways, their ratio, and whether every score and source list is the same.
Torch uses one thread (as each ``--workers`` worker does); the load average is printed, since other
processes share the CPUs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--study", default=str(REPO / "precomputed"))
    ap.add_argument("--target", default="sklearn_digits")
    ap.add_argument("--shots", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--approaches", default="pi-tuning,best-single,peft-linear")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from pitune_core.model.backbone import UnifiedBackbone
    from pitune_core.paths import StudyPaths
    from pitune_core.study.protocol import load_study_sources
    from pitune_core.tune.baselines import run_method
    from pitune_core.tune.side_cache import SideCache

    sources = load_study_sources(args.study, "lora")
    bb = UnifiedBackbone.load(StudyPaths(args.study).backbone)
    names = [a.strip() for a in args.approaches.split(",") if a.strip()]
    kw = dict(k=3, shots=args.shots, seed=args.seed)
    run_method("target-only", args.target, sources, bb, "lora", **kw)  # warm-up: data and features loaded once
    print(f"{args.target}, {args.shots} shots, seed {args.seed}; load average {os.getloadavg()[0]:.2f}")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache = SideCache(Path(tmp), "bench")
        for mode in ("without", "with"):
            for name in names:
                c0 = time.process_time()
                r = run_method(name, args.target, sources, bb, "lora", side_cache=cache if mode == "with" else None,
                               **kw)
                rows[(mode, name)] = (time.process_time() - c0, r)
    w = max(len(n) for n in [*names, "cell total"])
    print(f"{'approach':<{w}} {'without (CPU s)':>16} {'with (CPU s)':>13}  reused  same row")
    for name in names:
        (a, ra), (b, rb) = rows[("without", name)], rows[("with", name)]
        same = (ra["score"], ra["sources"]) == (rb["score"], rb["sources"])
        print(f"{name:<{w}} {a:>16.1f} {b:>13.1f}  {str(rb['side_reused']):>6}  {same}")
    ta = sum(rows[("without", n)][0] for n in names)
    tb = sum(rows[("with", n)][0] for n in names)
    print(f"{'cell total':<{w}} {ta:>16.1f} {tb:>13.1f}  ratio without/with {ta / tb:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
