"""Benchmark: vectorised fisher_similarity vs. a naive per-pair Python loop.

Run as ``python bench/bench_similarity.py``. Embeddings are random nonnegative (Fisher-like,
gamma-distributed) with d = 9,216 per task in 12 groups of 768. The naive loop is timed on
the first ``--naive-pairs`` pairs and extrapolated to all n(n-1)/2 pairs; both run in this
process so the speed-up is measured side by side. The naive values on those pairs are also
compared with the vectorised ones.

OMP_WAIT_POLICY defaults to PASSIVE here (set before torch loads OpenMP): with torch's default
spin-waiting, two intra-op threads on a machine whose cores are shared with other processes
ran 10x slower than one thread. On an idle many-core machine ACTIVE is faster (16 cores,
n=1000: 1.7 s ACTIVE vs 4.4 s PASSIVE), so set OMP_WAIT_POLICY=ACTIVE there to compare.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # must precede the first torch import

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pitune_core.predict.similarity import fisher_similarity  # noqa: E402

D_TOTAL, N_GROUPS = 9216, 12


def make_groups(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.gamma(0.5, 1e-4, size=(n, D_TOTAL)).astype(np.float32)
    width = D_TOTAL // N_GROUPS
    return {f"layer{g}.lora": np.ascontiguousarray(X[:, g * width : (g + 1) * width]) for g in range(N_GROUPS)}


def naive_pairs(groups: dict[str, np.ndarray], pairs: list[tuple[int, int]], eps: float = 1e-12) -> np.ndarray:
    """The formula as written in the paper: one pair, one group at a time (float64)."""
    arrays = [g.astype(np.float64) for g in groups.values()]
    out = np.empty(len(pairs))
    for p, (i, j) in enumerate(pairs):
        total = 0.0
        for e in arrays:
            a, b = e[i], e[j]
            s = a + b + eps
            a2, b2 = a / s, b / s
            na, nb = np.linalg.norm(a2), np.linalg.norm(b2)
            total += float(a2 @ b2 / (na * nb)) if na > 0 and nb > 0 else 0.0
        out[p] = total / len(arrays)
    return out


def first_pairs(n: int, limit: int) -> list[tuple[int, int]]:
    pairs = []
    for i in range(n):
        for j in range(i + 1, n):
            pairs.append((i, j))
            if len(pairs) == limit:
                return pairs
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--naive-pairs", type=int, default=2000, help="pairs timed in the naive loop")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"fisher_similarity benchmark: d={D_TOTAL} in {N_GROUPS} groups, float32, device={args.device}, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"load average {load:.2f}, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}"
    )
    header = f"{'n_tasks':>7} {'pairs':>8} {'vectorised_s':>12} {'naive_pairs':>11} {'naive_s':>8} " \
             f"{'naive_full_s(est)':>17} {'speed-up':>9} {'max|diff|':>9}"
    print(header)
    print("-" * len(header))
    for n in args.sizes:
        groups = make_groups(n)
        fisher_similarity(make_groups(8, seed=1), device=args.device)  # warm-up (allocator, threads)
        t0 = time.perf_counter()
        sim = fisher_similarity(groups, device=args.device)
        t_vec = time.perf_counter() - t0

        pairs = first_pairs(n, args.naive_pairs)
        t0 = time.perf_counter()
        ref = naive_pairs(groups, pairs)
        t_sub = time.perf_counter() - t0
        total = n * (n - 1) // 2
        t_full = t_sub * total / len(pairs)
        diff = float(np.max(np.abs(sim[tuple(np.array(pairs).T)] - ref)))
        print(f"{n:>7} {total:>8} {t_vec:>12.3f} {len(pairs):>11} {t_sub:>8.3f} "
              f"{t_full:>17.1f} {t_full / t_vec:>8.0f}x {diff:>9.1e}", flush=True)


if __name__ == "__main__":
    main()
