"""Executor overhead: local worker processes vs Ray tasks, side by side.

    python bench/bench_runs.py [--n 30] [--parallel 2] [--latency-runs 5] [--no-ray]

For a no-op job it measures, per run, submit -> started (the worker/task has
recorded itself) and started -> finished (job + recording the outcome), from
the registry's own timestamps, then the throughput of N tiny runs submitted at
once.  Both executors get the same parallelism (local ``max_parallel`` = Ray
``num_cpus`` = --parallel) and write to their own sqlite registry.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import jobkinds  # noqa: E402,F401  (the test-only kinds: noop; workers get the module's name and import it)
from pitune_core.runs.executor import LocalScheduler, ensure_scheduler, scheduler_running, wait  # noqa: E402
from pitune_core.runs.registry import RunRegistry  # noqa: E402


def _phases(records) -> dict[str, float]:
    return {
        "submit_to_started": statistics.median(r.started_at - r.created_at for r in records),
        "started_to_finished": statistics.median(r.finished_at - r.started_at for r in records),
        "end_to_end": statistics.median(r.finished_at - r.created_at for r in records),
    }


def _throughput(records, wall: float) -> dict[str, float]:
    return {"wall": wall, "runs_per_s": len(records) / wall}


def bench_local(root: Path, n: int, parallel: int, latency_runs: int, poll: float) -> dict[str, float]:
    # startup as the dashboard sees it: spawning a detached scheduler until it holds its lock
    spawn_db = root / "spawn.sqlite"
    RunRegistry(spawn_db).close()
    t0 = time.perf_counter()
    pid = ensure_scheduler(spawn_db, parallel, idle_timeout=5)
    while not scheduler_running(spawn_db):
        time.sleep(0.002)
    out = {"startup": time.perf_counter() - t0}
    os.kill(pid, signal.SIGTERM)

    # the runs themselves go through an in-process scheduler thread (same code, easier to time)
    reg = RunRegistry(root / "local.sqlite")
    sched = LocalScheduler(reg, max_parallel=parallel, poll_interval=poll).start()
    try:
        first = reg.submit("noop", {})
        rec = wait(reg, [first], timeout=120, poll_interval=0.005)[first]
        out["first_run"] = rec.finished_at - rec.created_at
        lat = []
        for _ in range(latency_runs):  # one at a time: pure per-run latency
            rid = reg.submit("noop", {})
            lat.append(wait(reg, [rid], timeout=120, poll_interval=0.005)[rid])
        out.update(_phases(lat))
        t0 = time.perf_counter()
        ids = [reg.submit("noop", {}) for _ in range(n)]
        recs = wait(reg, ids, timeout=600, poll_interval=0.005)
        out.update(_throughput(list(recs.values()), time.perf_counter() - t0))
        assert all(r.status == "succeeded" for r in recs.values())
    finally:
        sched.stop(terminate_workers=True)
    return out


def bench_ray(root: Path, n: int, parallel: int, latency_runs: int) -> dict[str, float]:
    from pitune_core.runs.ray_executor import RayExecutor

    reg = RunRegistry(root / "ray.sqlite")
    t0 = time.perf_counter()
    ex = RayExecutor(reg, num_cpus=parallel, init_kwargs={"log_to_driver": False})
    out = {"startup": time.perf_counter() - t0}
    try:
        first = ex.submit("noop", {})
        rec = ex.wait([first], timeout=120, poll_interval=0.005)[first]
        out["first_run"] = rec.finished_at - rec.created_at
        lat = []
        for _ in range(latency_runs):
            rid = ex.submit("noop", {})
            lat.append(ex.wait([rid], timeout=120, poll_interval=0.005)[rid])
        out.update(_phases(lat))
        t0 = time.perf_counter()
        ids = ex.map("noop", [{} for _ in range(n)])
        recs = ex.wait(ids, timeout=600, poll_interval=0.005)
        out.update(_throughput(list(recs.values()), time.perf_counter() - t0))
        assert all(r.status == "succeeded" for r in recs.values())
    finally:
        ex.shutdown()
    return out


ROWS = [
    ("startup", "startup (ensure_scheduler / ray.init)", "s"),
    ("first_run", "first run, submit -> finished (cold)", "ms"),
    ("submit_to_started", "per run: submit -> started (median)", "ms"),
    ("started_to_finished", "per run: started -> finished (median)", "ms"),
    ("end_to_end", "per run: submit -> finished (median)", "ms"),
    ("wall", "N runs at once: wall time", "s"),
    ("runs_per_s", "N runs at once: throughput (runs/s)", ""),
]


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ms":
        return f"{value * 1000:.1f} ms"
    if unit == "s":
        return f"{value:.2f} s"
    return f"{value:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30, help="tiny runs for the throughput test")
    parser.add_argument("--parallel", type=int, default=2, help="local max_parallel = Ray num_cpus")
    parser.add_argument("--latency-runs", type=int, default=5)
    parser.add_argument("--poll", type=float, default=0.1, help="local scheduler poll interval (default as shipped)")
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="pitune-bench-") as tmp:
        root = Path(tmp)
        local = bench_local(root, args.n, args.parallel, args.latency_runs, args.poll)
        ray = None
        if not args.no_ray:
            try:
                ray = bench_ray(root, args.n, args.parallel, args.latency_runs)
            except ImportError as exc:
                print(f"(skipping Ray: {exc})\n")

    print(f"no-op job; N={args.n}; parallel={args.parallel}; local poll={args.poll}s; "
          f"latency = median of {args.latency_runs} sequential runs")
    header = f"{'metric':48} {'local':>12} {'ray':>12} {'ray/local':>10}"
    print(header)
    print("-" * len(header))
    for key, label, unit in ROWS:
        lv = local.get(key)
        rv = ray.get(key) if ray else None
        ratio = f"{rv / lv:.2f}x" if rv is not None and lv else "-"
        print(f"{label:48} {_fmt(lv, unit):>12} {_fmt(rv, unit):>12} {ratio:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
