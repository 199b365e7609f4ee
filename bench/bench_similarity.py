"""Benchmark: top-k Fisher neighbours at hub scale, exact matrix vs candidate search, side by side.

Run as ``python bench/bench_similarity.py`` (about 5 minutes on 2 busy cores). Every task set is
made from the *real* LoRA Fisher embeddings of the shipped study (d = 73,728 in 24 groups) by
:func:`pitune_core.study.hub.synth_fisher` (the command ``pitune hub synth`` uses the same
generator), so the numbers are at the real dimension. Rows:

* ``real``: the 24 real tasks: exact matrix vs the candidate search with ``--real-candidates``
  candidates (of 23), recall@k of the candidate search against the exact top-k.
* ``hub N``, for N in ``--sizes`` (default 1000): the exact vectorised matrix
  (:func:`~pitune_core.predict.similarity.fisher_similarity`, the reference) and
  :func:`~pitune_core.predict.neighbors.top_k_neighbours` (``method="approx"``) in the same process,
  recall@k of the latter against the exact matrix's top-k over all N tasks.
* ``hub N`` for N in ``--hub-sizes`` (e.g. 10000): only the candidate search (the exact matrix is
  hours); its recall@k is measured against the exact top-k of ``--queries`` random query tasks,
  each compared with all N tasks by the exact measure.

Wall time, process CPU time (all threads) and the load average are printed: on a shared machine
wall time is CPU time stretched by the other processes, so ``cpu/threads`` is what an idle machine
with that many cores would take. OMP_WAIT_POLICY defaults to PASSIVE (see git history: spinning
intra-op threads ran 10x slower on shared cores).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # must precede the first torch / numba import

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pitune_core.predict.neighbors import (  # noqa: E402
    exact_neighbours_of,
    recall_at_k,
    top_k_neighbours,
)
from pitune_core.study.hub import HubConfig, load_real_fisher, synth_fisher, synth_names  # noqa: E402


class Clock:
    def __enter__(self):
        self.w, self.c = time.perf_counter(), _cpu()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.w, _cpu() - self.c


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _load() -> str:
    return f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "?"


def groups_of(E: np.ndarray, sizes: list[int]) -> dict[str, np.ndarray]:
    b = np.concatenate([[0], np.cumsum(sizes)])
    return {str(g): E[:, b[g]:b[g + 1]] for g in range(len(sizes))}


def exact_topk_from_matrix(S: np.ndarray, names: list[str], k: int) -> np.ndarray:
    S = S.copy()
    np.fill_diagonal(S, -np.inf)
    rank = np.argsort(np.argsort(np.array(names, dtype=object), kind="stable"), kind="stable")
    return np.stack([np.lexsort((rank, -S[i]))[:k] for i in range(len(names))])


def row(label, n, what, clock, recall="", extra=""):
    print(f"{label:>10} {n:>6} {what:<34} {clock.wall:>8.1f} {clock.cpu:>8.1f} {recall:>9} {_load():>5}  {extra}",
          flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="*", default=[1000], help="hub sizes with the exact matrix too")
    p.add_argument("--hub-sizes", type=int, nargs="*", default=[], help="hub sizes: candidate search only")
    p.add_argument("--queries", type=int, default=100, help="random queries for recall at --hub-sizes")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--candidates", type=int, default=None, help="default: max(10k, 100)")
    p.add_argument("--real-candidates", type=int, default=15)
    p.add_argument("--variants", nargs="*", default=[],
                   help="settings tried at --hub-sizes on the same tasks and queries, as CANDIDATES:PROXY_DIM "
                        "(0 = the default), e.g. 100:1024 200:1024")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    import numba
    import torch

    from pitune_core.predict.similarity import fisher_similarity

    real_names, R, sizes = load_real_fisher()
    print(f"Fisher top-{args.k} neighbours: d={R.shape[1]} in {len(sizes)} groups, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), numba {numba.__version__} "
          f"({numba.get_num_threads()} threads), OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}")
    print(f"{'set':>10} {'n':>6} {'what':<34} {'wall_s':>8} {'cpu_s':>8} {'recall@k':>9} {'load':>5}")
    # warm-up: numba compiles (or loads its cache) once
    top_k_neighbours(R[:8], real_names[:8], 2, group_sizes=sizes, method="approx", candidates=3)

    # the 24 real tasks
    with Clock() as c:
        S = fisher_similarity(groups_of(R, sizes), device="cpu")
    ref = exact_topk_from_matrix(S, real_names, args.k)
    row("real", len(real_names), "exact matrix (fisher_similarity)", c)
    with Clock() as c:
        nb = top_k_neighbours(R, real_names, args.k, group_sizes=sizes, method="approx",
                              candidates=args.real_candidates)
    row("real", len(real_names), f"candidates ({args.real_candidates} of {len(real_names) - 1})", c,
        f"{recall_at_k(nb.index, ref):.3f}")

    for n in args.sizes:
        E, plan = synth_fisher(R, sizes, HubConfig(n=n, seed=args.seed))
        names = synth_names(real_names, plan)
        with Clock() as c:
            S = fisher_similarity(groups_of(E, sizes), device="cpu")
        row(f"hub {n}", n, "exact matrix (fisher_similarity)", c, extra=f"{n * (n - 1) // 2} pairs")
        ref = exact_topk_from_matrix(S, names, args.k)
        del S
        with Clock() as c:
            nb = top_k_neighbours(E, names, args.k, group_sizes=sizes, method="approx", candidates=args.candidates)
        row(f"hub {n}", n, f"candidates ({nb.info['candidates']}/task)", c, f"{recall_at_k(nb.index, ref):.4f}",
            f"{nb.info['pairs']} pairs; " + ", ".join(f"{k} {v:.1f}s" for k, v in nb.info["seconds"].items()))
        del E

    for n in args.hub_sizes:
        with Clock() as c:
            E, plan = synth_fisher(R, sizes, HubConfig(n=n, seed=args.seed))
        names = synth_names(real_names, plan)
        row(f"hub {n}", n, f"generate ({E.nbytes / 2**30:.1f} GiB float32)", c)
        q = np.sort(np.random.default_rng(args.seed + 1).choice(n, min(args.queries, n), replace=False))
        with Clock() as c:
            ref, _ = exact_neighbours_of(E, names, q, args.k, group_sizes=sizes)
        row(f"hub {n}", n, f"exact top-k of {len(q)} queries", c, "",
            f"{len(q) * (n - 1)} pairs (the reference for recall)")
        for variant in args.variants or [f"{args.candidates or 0}:0"]:
            cand, dim = (int(x) for x in variant.split(":"))
            kw = {"candidates": cand or None, **({"proxy_dim": dim} if dim else {})}
            with Clock() as c:
                nb = top_k_neighbours(E, names, args.k, group_sizes=sizes, method="approx", **kw)
            row(f"hub {n}", n, f"candidates ({nb.info['candidates']}/task, dim {nb.info['proxy_dim']})", c,
                f"{recall_at_k(nb.index[q], ref):.4f}",
                f"{nb.info['pairs']} pairs; " + ", ".join(f"{k} {v:.1f}s" for k, v in nb.info["seconds"].items()))
        del E


if __name__ == "__main__":
    main()
