"""Study throughput of the machine: the study's jobs before issue 15, after it, and after it in ``--workers``.

    python bench/bench_throughput.py [--seeds 0 1 2 3] [--jobs transfer-text transfer-image compare-text compare-image]
                                     [--workers auto] [--out bench_throughput.json]

The jobs are ``bench/bench_training.py``'s (the real transfer-pair and comparison code paths on the
shipped study), each run for every seed. Each job kind is run three ways, in this one run, one after
the other (the order rotates from kind to kind, so load drift hits all three alike):

- ``before``: the code before issue 15 (``bench_training.code_path("before")``: verbatim legacy loop,
  padded trunk), in one process at torch's default threads: how a study ran before;
- ``after``: today's code, in one process at torch's default threads (``bench_training``'s ratio, code only);
- ``workers``: today's code in N worker processes, each with the environment ``pitune ... --workers N``
  gives its workers (:func:`pitune_core.cli.workers.worker_env`: ``PITUNE_SHARD=i/N``, the cores shared out
  as threads), each taking its share of the jobs with the study's own :func:`take_shard`;
- ``before-workers``: the code before issue 15 in those same workers, so that the code's share and the
  layout's share of the gain can be told apart (``workers / before-workers`` is the code alone at that
  layout; ``before-workers / before`` is the layout alone).

Every way starts fresh processes that load the backbone, the sources and the tasks' data, then wait
at a barrier; the clock runs from the barrier until the last process is done. (Each way is
its own processes, so ``--seeds`` with an even count gives each of 2 workers the same job kinds.) Reported per job kind:
the machine's whole-job steps/s (all training steps / that wall time: training, evaluation and all else the
jobs do), the training-loop steps/s (summed over the processes, which run side by side), the ratios to
``before``, each way's test scores (mean ± std over seeds, ddof=1: the same jobs must score the same
within seed noise), and each process's peak resident memory (what ``workers.WORKER_MEMORY`` budgets).

OpenMP's wait policy decides much of the answer, so run it both ways. The bench sets
``OMP_WAIT_POLICY=PASSIVE`` unless it is already set, as every bench here does: idle OpenMP threads sleep
at once instead of spinning, which on shared cores once made runs 10x slower. But a two-thread process
of many small operations loses time to those wake-ups, and single-thread workers do not. Under
``OMP_WAIT_POLICY=ACTIVE python bench/bench_throughput.py`` (spinning, close to libgomp's default when the
variable is unset and the machine is quiet), the one-process baselines are faster and the workers' lead
over them is smaller.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("PITUNE_QUIET", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pitune_core.cli import workers  # noqa: E402

WAYS = ("before", "after", "workers", "before-workers")


def _child(which: str, jobs: list, barrier, queue) -> None:
    """One process of one way: load everything, wait at the barrier, run this process's share."""
    import resource

    import torch

    import bench_training as bt
    from pitune_core.data.tasks import get_task
    from pitune_core.model import experts
    from pitune_core.model.backbone import UnifiedBackbone
    from pitune_core.model.device import configure_threads
    from pitune_core.paths import StudyPaths
    from pitune_core.study.sources import load_sources
    from pitune_core.study.transfer import SHARD_ENV, take_shard

    configure_threads()  # PITUNE_NUM_THREADS of a worker, as `pitune ... --workers` applies it
    bb = UnifiedBackbone.load(StudyPaths(bt.STUDY).backbone)
    sources = load_sources(bt.STUDY, "lora", "fisher")
    mine = take_shard(jobs)
    for name in {n for n, _ in mine}:
        experts.prepare_task(get_task(bt.JOBS[name][1]), bb)
    barrier.wait()
    rows = []
    for name, seed in mine:
        clock = bt.Clock()
        t0 = time.perf_counter()
        with bt.code_path(bb, "before" if which.startswith("before") else "after", clock):
            score = bt.run_job(name, bb, sources, seed)
        rows.append({"job": name, "seed": seed, "score": score, "steps": clock.steps, "train_s": clock.train_s,
                     "job_s": time.perf_counter() - t0})
    queue.put({"rows": rows, "threads": torch.get_num_threads(), "shard": os.environ.get(SHARD_ENV),
               "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2})


def run_way(which: str, jobs: list, n: int) -> dict:
    """Run ``jobs`` one way (``n`` processes for ``workers``, else 1); returns its measurements."""
    ctx = mp.get_context("spawn")
    in_workers = which.endswith("workers")
    procs = n if in_workers else 1
    barrier, queue = ctx.Barrier(procs + 1), ctx.Queue()
    started, saved = [], dict(os.environ)
    try:
        for i in range(procs):
            os.environ.clear()  # a spawned process starts with the environment of this moment
            os.environ.update(workers.worker_env(i, n, saved) if in_workers else saved)
            p = ctx.Process(target=_child, args=(which, jobs, barrier, queue))
            p.start()
            started.append(p)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    barrier.wait()
    t0 = time.perf_counter()
    outs = [queue.get() for _ in started]
    wall = time.perf_counter() - t0
    for p in started:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"a {which} process failed (exit {p.exitcode})")
    rows = [r for o in outs for r in o["rows"]]
    steps = sum(r["steps"] for r in rows)
    by_proc = [(sum(r["steps"] for r in o["rows"]), sum(r["train_s"] for r in o["rows"])) for o in outs]
    return {"way": which, "processes": procs, "threads": [o["threads"] for o in outs], "wall_s": wall,
            "steps": steps, "machine_steps_per_s": steps / wall,
            "train_steps_per_s": sum(s / t for s, t in by_proc if t > 0),
            "peak_rss_gib": [o["peak_rss_gib"] for o in outs], "rows": rows}


def main(argv=None) -> int:
    import bench_training as bt

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--jobs", nargs="+", default=list(bt.JOBS), choices=list(bt.JOBS))
    ap.add_argument("--workers", default="auto", help="N or auto, as `pitune transfer-study --workers`")
    ap.add_argument("--out", default=None, help="write the raw measurements as JSON here")
    args = ap.parse_args(argv)
    n = workers.resolve(args.workers)
    print(f"{workers.usable_cores()} usable cores; workers: {n} x {workers.threads_per_worker(n)} thread(s); "
          f"seeds {args.seeds}; OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}", flush=True)
    result = {}
    for k, name in enumerate(args.jobs):
        jobs = [(name, s) for s in args.seeds]
        order = WAYS[k % len(WAYS):] + WAYS[:k % len(WAYS)]
        result[name] = {}
        for which in order:
            r = run_way(which, jobs, n)
            result[name][which] = r
            print(f"  {name:15s} {which:8s}: {r['processes']} process(es) x {r['threads'][0]} thread(s), "
                  f"{r['steps']} steps in {r['wall_s']:6.1f} s = {r['machine_steps_per_s']:5.2f} steps/s "
                  f"(train loop {r['train_steps_per_s']:5.2f}), peak RSS {max(r['peak_rss_gib']):.2f} GiB",
                  flush=True)

    def ms(rows):
        v = [r["score"] for r in sorted(rows, key=lambda r: r["seed"])]
        return f"{statistics.mean(v):.4f} ± {statistics.stdev(v) if len(v) > 1 else float('nan'):.4f}"

    print(f"\n{'job':15s} | {'whole-job steps/s of the machine: before':>40s} {'after':>6s} {'workers':>8s} "
          f"{'before-workers':>14s} | {'after/before':>12s} {'workers/before':>14s} | {'code alone':>10s} "
          f"{'layout alone':>12s} | {'train loop workers/before':>25s} | score before / workers (mean ± std)")
    for name, r in result.items():
        b, a, w, bw = (r[x]["machine_steps_per_s"] for x in WAYS)
        print(f"{name:15s} | {b:40.2f} {a:6.2f} {w:8.2f} {bw:14.2f} | {a / b:11.2f}x {w / b:13.2f}x | "
              f"{w / bw:9.2f}x {bw / b:11.2f}x | "
              f"{r['workers']['train_steps_per_s'] / r['before']['train_steps_per_s']:24.2f}x | "
              f"{ms(r['before']['rows'])} / {ms(r['workers']['rows'])}")
        same = all(x["score"] == y["score"] for x, y in zip(*(sorted(r[w_]["rows"], key=lambda q: q["seed"])
                                                              for w_ in ("before", "workers"))))
        print(f"{'':15s}   scores before and workers {'identical seed by seed' if same else 'DIFFER seed by seed'}"
              f"; after {ms(r['after']['rows'])}, before-workers {ms(r['before-workers']['rows'])}")
    if args.out:
        Path(args.out).write_text(json.dumps({"workers": n, "seeds": args.seeds, "result": result}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
